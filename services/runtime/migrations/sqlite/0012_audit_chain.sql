-- The access log as a hash chain: a sealer (runtime::audit::seal, one at a time) gives each
-- committed row its place `chain_seq` (1, 2, 3 …) and `hash` = SHA-256 of the previous row's
-- hash and this row's content; `econsult audit verify` walks it. `request_id` is the server's
-- id of the call (`trace_id` comes from the client's traceparent). `idempotency.accesses`: the
-- access rows written with a stored answer (JSON), logged again when the answer is replayed.

ALTER TABLE audit_log ADD COLUMN request_id TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_log ADD COLUMN chain_seq BIGINT;
ALTER TABLE audit_log ADD COLUMN hash TEXT;
CREATE UNIQUE INDEX audit_log_chain ON audit_log (chain_seq);
CREATE INDEX audit_log_unsealed ON audit_log (id) WHERE chain_seq IS NULL;

ALTER TABLE idempotency ADD COLUMN accesses TEXT NOT NULL DEFAULT '';

-- The one change a row may get: sealing, once, with every other column as it was.
DROP TRIGGER audit_log_no_update;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
WHEN NOT (OLD.chain_seq IS NULL AND OLD.hash IS NULL
          AND NEW.chain_seq IS NOT NULL AND NEW.hash IS NOT NULL
          AND NEW.id IS OLD.id AND NEW.at IS OLD.at AND NEW.subject IS OLD.subject
          AND NEW.role IS OLD.role AND NEW.org_number IS OLD.org_number
          AND NEW.action IS OLD.action AND NEW.resource IS OLD.resource
          AND NEW.patient_nin IS OLD.patient_nin AND NEW.trace_id IS OLD.trace_id
          AND NEW.request_id IS OLD.request_id)
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
