-- Acting for others (issue 24). See the SQLite twin for comments.

CREATE TABLE proxy_fullmakts (
    id TEXT PRIMARY KEY,
    giver_nin TEXT NOT NULL,
    holder_nin TEXT NOT NULL,
    scope BIGINT NOT NULL,
    end_date TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX proxy_fullmakts_giver ON proxy_fullmakts (giver_nin, created_at);
CREATE INDEX proxy_fullmakts_holder ON proxy_fullmakts (holder_nin, giver_nin);

ALTER TABLE audit_log ADD COLUMN actor_nin TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_log ADD COLUMN acted_as BIGINT NOT NULL DEFAULT 0;

CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.chain_seq IS NULL AND OLD.hash IS NULL
       AND NEW.chain_seq IS NOT NULL AND NEW.hash IS NOT NULL
       AND (NEW.id, NEW.at, NEW.subject, NEW.role, NEW.org_number, NEW.action, NEW.resource,
            NEW.patient_nin, NEW.trace_id, NEW.request_id, NEW.actor_nin, NEW.acted_as)
           IS NOT DISTINCT FROM
           (OLD.id, OLD.at, OLD.subject, OLD.role, OLD.org_number, OLD.action, OLD.resource,
            OLD.patient_nin, OLD.trace_id, OLD.request_id, OLD.actor_nin, OLD.acted_as) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only';
END $$;
