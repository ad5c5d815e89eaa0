-- Notify service tables (owned by services/notify). Times are Unix milliseconds; flags 0/1.

-- A patient's notification preferences. Contact details are sealed (ChaCha20-Poly1305 with the
-- key from --notify-contact-key; base64 of nonce || ciphertext) and opened only by the sender.
-- channels: bit 1 SMS, bit 2 e-mail. reminder_minutes: lead times, comma-separated.
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

-- One message to one recipient on one channel. dedupe_key makes it exactly once per
-- (event, recipient, channel), or per (appointment, lead time, recipient, channel) for a
-- reminder. facts: the JSON the templates may see (no health information).
-- status: 0 queued, 1 sent, 2 failed (permanent, reason in last_error), 3 given up (retries
-- exhausted), 4 cancelled (a reminder of an appointment that was cancelled or moved).
-- lease_until: a sender took it until then (another may take it after). urgent: a same-day
-- change, sent in quiet hours too.
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

-- Appointments that were cancelled or moved: their reminders are never sent, whatever order the
-- events arrive in.
CREATE TABLE notify_cancelled_appointments (
    appointment_id TEXT NOT NULL PRIMARY KEY,
    cancelled_at BIGINT NOT NULL
);
