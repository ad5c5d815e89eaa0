-- Notifications to those who act for a patient, and the practice's own name (issue 25). See
-- the SQLite twin for comments.

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

ALTER TABLE notify_messages ADD COLUMN subject_nin TEXT NOT NULL DEFAULT '';

ALTER TABLE booking_gps ADD COLUMN practice_name TEXT NOT NULL DEFAULT '';
