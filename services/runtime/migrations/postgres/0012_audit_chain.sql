-- The access log as a hash chain, a server-generated request id per row, and the access rows
-- of a stored idempotent answer (a replay logs them again). See the SQLite twin for comments.

ALTER TABLE audit_log ADD COLUMN request_id TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_log ADD COLUMN chain_seq BIGINT UNIQUE;
ALTER TABLE audit_log ADD COLUMN hash TEXT;
CREATE INDEX audit_log_unsealed ON audit_log (id) WHERE chain_seq IS NULL;

ALTER TABLE idempotency ADD COLUMN accesses TEXT NOT NULL DEFAULT '';

-- The one change a row may get: sealing, once, with every other column as it was.
CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.chain_seq IS NULL AND OLD.hash IS NULL
       AND NEW.chain_seq IS NOT NULL AND NEW.hash IS NOT NULL
       AND (NEW.id, NEW.at, NEW.subject, NEW.role, NEW.org_number, NEW.action, NEW.resource,
            NEW.patient_nin, NEW.trace_id, NEW.request_id)
           IS NOT DISTINCT FROM
           (OLD.id, OLD.at, OLD.subject, OLD.role, OLD.org_number, OLD.action, OLD.resource,
            OLD.patient_nin, OLD.trace_id, OLD.request_id) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only';
END $$;
