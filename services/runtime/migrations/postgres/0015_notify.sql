-- Notify service tables (owned by services/notify). See the SQLite twin for comments.

CREATE TABLE notify_preferences (
    patient_nin TEXT NOT NULL PRIMARY KEY,
    email_sealed TEXT,
    phone_sealed TEXT,
    channels INTEGER NOT NULL,
    reminder_minutes TEXT NOT NULL,
    language TEXT NOT NULL,
    opted_out INTEGER NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE notify_messages (
    message_id TEXT NOT NULL PRIMARY KEY,
    dedupe_key TEXT NOT NULL UNIQUE,
    patient_nin TEXT NOT NULL,
    kind TEXT NOT NULL,
    channel TEXT NOT NULL,
    facts TEXT NOT NULL,
    appointment_id TEXT NOT NULL,
    urgent INTEGER NOT NULL,
    status INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    not_before BIGINT NOT NULL,
    lease_until BIGINT NOT NULL,
    last_error TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    done_at BIGINT
);
CREATE INDEX notify_messages_queued ON notify_messages (not_before) WHERE status = 0;
CREATE INDEX notify_messages_appointment ON notify_messages (appointment_id) WHERE status = 0;
CREATE INDEX notify_messages_dead ON notify_messages (done_at) WHERE status IN (2, 3);

CREATE TABLE notify_cancelled_appointments (
    appointment_id TEXT NOT NULL PRIMARY KEY,
    cancelled_at BIGINT NOT NULL
);
