-- Notifications to those who act for a patient (issue 25), and the practice's own name.

-- A parent's or fullmakt holder's own preferences for messages about the person they act for
-- (subject_nin). Contact details sealed as in notify_preferences, with the recipient's number as
-- associated data. relation: how the recipient was related when they set these (1 parent, the
-- token's claim at that time; 2 fullmakt), checked again before each message is queued and
-- sent (a parent's access ends at 16; a fullmakt must be in force and cover the service).
CREATE TABLE notify_proxy_preferences (
    subject_nin TEXT NOT NULL,
    recipient_nin TEXT NOT NULL,
    relation INTEGER NOT NULL,
    email_sealed TEXT,
    phone_sealed TEXT,
    channels INTEGER NOT NULL,
    reminder_minutes TEXT NOT NULL,
    language TEXT NOT NULL,
    opted_out INTEGER NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (subject_nin, recipient_nin)
);

-- The person a message is about when its recipient (patient_nin) acts for them; '' when the
-- recipient is that person.
ALTER TABLE notify_messages ADD COLUMN subject_nin TEXT NOT NULL DEFAULT '';

-- The practice's name as its patients know it (set by the EHR with UpsertGp); '' when not set
-- (messages then name the GP).
ALTER TABLE booking_gps ADD COLUMN practice_name TEXT NOT NULL DEFAULT '';
