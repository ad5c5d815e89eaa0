-- Acting for others (issue 24). `proxy_fullmakts`: powers of attorney given in econsult, never
-- deleted; revoking sets `revoked_at` once. `scope`: 1 booking, 2 consultation, 3 both.
-- `end_date`: the last day in force, YYYY-MM-DD (Europe/Oslo).
-- The access log gains the actor: `actor_nin` (the acting person's number when they acted for
-- the patient in `patient_nin`, '' when the caller acted for themselves) and `acted_as`
-- (0 self, 1 parent, 2 fullmakt); the sealing trigger keeps them unchanged too.

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

DROP TRIGGER audit_log_no_update;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
WHEN NOT (OLD.chain_seq IS NULL AND OLD.hash IS NULL
          AND NEW.chain_seq IS NOT NULL AND NEW.hash IS NOT NULL
          AND NEW.id IS OLD.id AND NEW.at IS OLD.at AND NEW.subject IS OLD.subject
          AND NEW.role IS OLD.role AND NEW.org_number IS OLD.org_number
          AND NEW.action IS OLD.action AND NEW.resource IS OLD.resource
          AND NEW.patient_nin IS OLD.patient_nin AND NEW.trace_id IS OLD.trace_id
          AND NEW.request_id IS OLD.request_id
          AND NEW.actor_nin IS OLD.actor_nin AND NEW.acted_as IS OLD.acted_as)
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
