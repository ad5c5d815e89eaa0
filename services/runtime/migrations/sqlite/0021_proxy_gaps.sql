-- Acting for others (issue 24), the remaining gaps.
-- `proxy_protected_addresses`: people known to have a strictly confidential address (code 6/7),
-- noted from their own token's `protected_address` claim on any of their patient calls; no one
-- acts for them from then on (a fullmakt holder's calls are refused). The row goes when the
-- person's token says otherwise on one of the fullmakt RPCs.
-- `*_by_name`: the acting person's display name (token claim `name`), '' when unknown, beside
-- the actor's number and relation the records already keep.
-- `signalling_participants.actor_nin/actor_relation/actor_name`: who joined as the patient
-- side when it was not the patient (relation 1 parent, 2 fullmakt; 0 the patient themselves).
-- `consultation_threads.confidential`: 1 when the practice marked the thread confidential to
-- the patient (a parent with limited access does not see it).
CREATE TABLE proxy_protected_addresses (
    nin TEXT PRIMARY KEY,
    noted_at BIGINT NOT NULL
);
ALTER TABLE booking_appointments ADD COLUMN booked_by_name TEXT NOT NULL DEFAULT '';
ALTER TABLE consultation_threads ADD COLUMN started_by_name TEXT NOT NULL DEFAULT '';
ALTER TABLE consultation_threads ADD COLUMN confidential BIGINT NOT NULL DEFAULT 0;
ALTER TABLE signalling_participants ADD COLUMN actor_nin TEXT NOT NULL DEFAULT '';
ALTER TABLE signalling_participants ADD COLUMN actor_relation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE signalling_participants ADD COLUMN actor_name TEXT NOT NULL DEFAULT '';
