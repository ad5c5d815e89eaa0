-- Platform tables shared by all services: transactional outbox, bus consumer offsets,
-- idempotency records, audit log. See the SQLite twin for comments; keep both in step.

CREATE TABLE outbox (
    id BIGSERIAL PRIMARY KEY,
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

CREATE TABLE bus_offsets (
    consumer_group TEXT PRIMARY KEY,
    seq BIGINT NOT NULL
);

CREATE TABLE processed_events (
    consumer TEXT NOT NULL,
    event_id TEXT NOT NULL,
    processed_at BIGINT NOT NULL,
    PRIMARY KEY (consumer, event_id)
);

CREATE TABLE idempotency (
    scope TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    response BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (scope, idem_key)
);

CREATE TABLE audit_log (
    id BIGSERIAL PRIMARY KEY,
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
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$;
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
