-- The access log as Normen asks (issue 22). See the SQLite twin for comments.
ALTER TABLE audit_log ADD COLUMN actor_name TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_log ADD COLUMN actor_hpr TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_log ADD COLUMN system_name TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_log ADD COLUMN purpose BIGINT NOT NULL DEFAULT 0;
ALTER TABLE audit_log ADD COLUMN what TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_log ADD COLUMN what_subject TEXT NOT NULL DEFAULT '';

CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.chain_seq IS NULL AND OLD.hash IS NULL
       AND NEW.chain_seq IS NOT NULL AND NEW.hash IS NOT NULL
       AND (NEW.id, NEW.at, NEW.subject, NEW.role, NEW.org_number, NEW.action, NEW.resource,
            NEW.patient_nin, NEW.trace_id, NEW.request_id, NEW.actor_nin, NEW.acted_as,
            NEW.actor_name, NEW.actor_hpr, NEW.system_name, NEW.purpose, NEW.what,
            NEW.what_subject)
           IS NOT DISTINCT FROM
           (OLD.id, OLD.at, OLD.subject, OLD.role, OLD.org_number, OLD.action, OLD.resource,
            OLD.patient_nin, OLD.trace_id, OLD.request_id, OLD.actor_nin, OLD.acted_as,
            OLD.actor_name, OLD.actor_hpr, OLD.system_name, OLD.purpose, OLD.what,
            OLD.what_subject) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only';
END $$;
