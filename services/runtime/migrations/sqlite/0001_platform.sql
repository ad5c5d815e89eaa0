-- Platform tables shared by all services: transactional outbox, bus consumer offsets,
-- idempotency records, audit log.

-- Events written in the same transaction as the state change they describe. The relay gives
-- each a gap-free `seq` in commit order and then publishes it; `published_at` marks delivery to
-- the bus. Rows are kept: the outbox is also the durable event log stats can rebuild from.
-- route_key routes per-person change streams (e.g. a patient's identity number); '' = none.
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    org_number TEXT NOT NULL,
    route_key TEXT NOT NULL DEFAULT '',
    payload TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    seq BIGINT UNIQUE,
    published_at BIGINT
);
CREATE INDEX outbox_unsequenced ON outbox (id) WHERE seq IS NULL;
CREATE INDEX outbox_unpublished ON outbox (seq) WHERE seq IS NOT NULL AND published_at IS NULL;
CREATE INDEX outbox_org_seq ON outbox (org_number, seq);
CREATE INDEX outbox_route_seq ON outbox (route_key, seq) WHERE route_key <> '';

-- Position of each consumer group of the embedded (database-backed) event bus.
CREATE TABLE bus_offsets (
    consumer_group TEXT PRIMARY KEY,
    seq BIGINT NOT NULL
);

-- Events a consumer has applied, so a redelivered event is never applied twice.
CREATE TABLE processed_events (
    consumer TEXT NOT NULL,
    event_id TEXT NOT NULL,
    processed_at BIGINT NOT NULL,
    PRIMARY KEY (consumer, event_id)
);

-- First result of each mutating call, by caller and idempotency key.
CREATE TABLE idempotency (
    scope TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    response BLOB NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (scope, idem_key)
);

-- Append-only log of patient-data access. Never updated or deleted by the application.
CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at BIGINT NOT NULL,
    subject TEXT NOT NULL,
    role BIGINT NOT NULL,
    org_number TEXT NOT NULL,
    action TEXT NOT NULL,
    resource TEXT NOT NULL,
    patient_nin TEXT NOT NULL,
    trace_id TEXT NOT NULL
);
CREATE INDEX audit_log_patient ON audit_log (patient_nin, id);
CREATE INDEX audit_log_subject ON audit_log (subject, id);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
