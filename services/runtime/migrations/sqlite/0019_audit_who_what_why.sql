-- The access log as Normen asks (issue 22): who, what and why in words a patient reads.
-- `actor_name`, `actor_hpr`: the person who acted (a clinician: HelseID's name and HPR claims;
-- an EHR system call: the person it names in `x-acting-name` / `x-acting-hpr`).
-- `system_name`: for a system call, the system (HelseID's client name; `subject` is its id).
-- `purpose`: why (runtime::audit::Purpose: 1 own access, 2 treatment, 3 administration,
-- 4 quality assurance, 5 operations; 0 for rows written before this migration).
-- `what`: the access in words, without patient free text ("read your e-consultation");
-- `what_subject`: the free text it names (a thread's subject), shown only in the patient's
-- own log. Old rows keep '' / 0. The sealing trigger keeps the new columns unchanged too.
ALTER TABLE audit_log ADD COLUMN actor_name TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_log ADD COLUMN actor_hpr TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_log ADD COLUMN system_name TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_log ADD COLUMN purpose BIGINT NOT NULL DEFAULT 0;
ALTER TABLE audit_log ADD COLUMN what TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_log ADD COLUMN what_subject TEXT NOT NULL DEFAULT '';

DROP TRIGGER audit_log_no_update;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
WHEN NOT (OLD.chain_seq IS NULL AND OLD.hash IS NULL
          AND NEW.chain_seq IS NOT NULL AND NEW.hash IS NOT NULL
          AND NEW.id IS OLD.id AND NEW.at IS OLD.at AND NEW.subject IS OLD.subject
          AND NEW.role IS OLD.role AND NEW.org_number IS OLD.org_number
          AND NEW.action IS OLD.action AND NEW.resource IS OLD.resource
          AND NEW.patient_nin IS OLD.patient_nin AND NEW.trace_id IS OLD.trace_id
          AND NEW.request_id IS OLD.request_id
          AND NEW.actor_nin IS OLD.actor_nin AND NEW.acted_as IS OLD.acted_as
          AND NEW.actor_name IS OLD.actor_name AND NEW.actor_hpr IS OLD.actor_hpr
          AND NEW.system_name IS OLD.system_name AND NEW.purpose IS OLD.purpose
          AND NEW.what IS OLD.what AND NEW.what_subject IS OLD.what_subject)
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
