-- The guarantee engine. See the SQLite twin for comments.
CREATE TABLE booking_guarantee_policies (
    org_number TEXT PRIMARY KEY,
    steps TEXT NOT NULL,
    unmet_threshold BIGINT NOT NULL CHECK (unmet_threshold BETWEEN 1 AND 1000),
    updated_at BIGINT NOT NULL
);

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

ALTER TABLE booking_episodes ADD COLUMN met_by BIGINT NOT NULL DEFAULT 0;
ALTER TABLE booking_episodes ADD COLUMN met_at BIGINT;
ALTER TABLE booking_episodes ADD COLUMN unmet_told_at BIGINT;
CREATE INDEX booking_episodes_open_window ON booking_episodes (deadline_end) WHERE outcome = 0;

ALTER TABLE consultation_threads ADD COLUMN booking_request_id TEXT;
