-- The guarantee engine (econsult_booking::guarantee): what the practice does when a booking
-- request cannot be met within five working days by the patient's own GP.

-- A practice's policy: the engine's steps in order, as codes of econsult.booking.v1.GuaranteeStep
-- separated by commas ("1,2,3,4,5"; '' = the engine does nothing), and the number of unmet
-- requests of one GP in the target window above which the practice is alerted. A practice
-- without a row has the default policy.
CREATE TABLE booking_guarantee_policies (
    org_number TEXT PRIMARY KEY,
    steps TEXT NOT NULL,
    unmet_threshold BIGINT NOT NULL CHECK (unmet_threshold BETWEEN 1 AND 1000),
    updated_at BIGINT NOT NULL
);

-- The priority waitlist: one entry per booking request, practice-wide, for the request's target
-- window (a slot starting before deadline_end). Served by the request's time (earliest first),
-- before the GPs' ordinary waitlists. An entry offered a hold is inactive (offered_hold_id).
CREATE TABLE booking_priority_waitlist (
    entry_id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL UNIQUE,
    org_number TEXT NOT NULL,
    gp_uid TEXT NOT NULL REFERENCES booking_gps (gp_uid),
    patient_nin TEXT NOT NULL,
    requested_at BIGINT NOT NULL,
    deadline_end BIGINT NOT NULL,
    joined_at BIGINT NOT NULL,
    active BIGINT NOT NULL,
    offered_hold_id TEXT
);
CREATE INDEX booking_priority_waitlist_queue ON booking_priority_waitlist (org_number, requested_at) WHERE active = 1;
CREATE INDEX booking_priority_waitlist_patient ON booking_priority_waitlist (patient_nin);

-- Which step of the engine met a booking request (0 none yet or own GP, 1 colleague or locum,
-- 2 video or phone, 3 e-consultation reply, 4 priority waitlist) and when. The first step that
-- met it stays. Outcome 5: closed by the practice's reply to an e-consultation started from it.
ALTER TABLE booking_episodes ADD COLUMN met_by BIGINT NOT NULL DEFAULT 0;
ALTER TABLE booking_episodes ADD COLUMN met_at BIGINT;
-- When the practice was told that the request is unmet ("booking.request_unmet"), once.
ALTER TABLE booking_episodes ADD COLUMN unmet_told_at BIGINT;
-- Open requests by the end of their window: the watch of unmet requests (every few seconds on
-- every instance) reads only these.
CREATE INDEX booking_episodes_open_window ON booking_episodes (deadline_end) WHERE outcome = 0;

-- The booking request an e-consultation was started from (the guarantee engine's offer).
ALTER TABLE consultation_threads ADD COLUMN booking_request_id TEXT;
