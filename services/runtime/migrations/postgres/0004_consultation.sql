-- Consultation service tables (owned by services/consultation). Times are Unix milliseconds;
-- enums use the numbers of econsult.consultation.v1. Threads are never deleted (health records).

-- Response SLA per practice (working days); absent = 5.
CREATE TABLE consultation_settings (
    org_number TEXT PRIMARY KEY,
    response_working_days BIGINT NOT NULL CHECK (response_working_days BETWEEN 1 AND 20),
    updated_at BIGINT NOT NULL
);

-- last_seq is the per-thread message counter: a message takes last_seq + 1 with a conditional
-- UPDATE in its transaction, and (thread_id, seq) is unique, so the order is gap-free.
CREATE TABLE consultation_threads (
    thread_id TEXT PRIMARY KEY,
    patient_nin TEXT NOT NULL,
    gp_id TEXT NOT NULL,
    gp_display_name TEXT NOT NULL,
    org_number TEXT NOT NULL,
    municipality_number TEXT NOT NULL,
    category BIGINT NOT NULL,
    subject TEXT NOT NULL,
    state BIGINT NOT NULL,
    submitted_at BIGINT NOT NULL,
    due_at BIGINT NOT NULL,
    first_response_at BIGINT,
    assigned_hpr TEXT NOT NULL DEFAULT '',
    last_seq BIGINT NOT NULL DEFAULT 0,
    patient_read_seq BIGINT NOT NULL DEFAULT 0,
    practice_read_seq BIGINT NOT NULL DEFAULT 0,
    outcome TEXT NOT NULL DEFAULT '',
    tariff_code TEXT NOT NULL DEFAULT '',
    closed_at BIGINT,
    updated_at BIGINT NOT NULL
);
CREATE INDEX consultation_threads_patient ON consultation_threads (patient_nin, submitted_at);
CREATE INDEX consultation_threads_inbox ON consultation_threads (org_number, state, due_at);

CREATE TABLE consultation_messages (
    message_id TEXT PRIMARY KEY,
    thread_id TEXT NOT NULL REFERENCES consultation_threads (thread_id),
    seq BIGINT NOT NULL,
    author BIGINT NOT NULL,
    author_hpr TEXT NOT NULL DEFAULT '',
    body TEXT NOT NULL,
    sent_at BIGINT NOT NULL,
    UNIQUE (thread_id, seq)
);

CREATE TABLE consultation_attachments (
    attachment_id TEXT PRIMARY KEY,
    message_id TEXT NOT NULL REFERENCES consultation_messages (message_id),
    thread_id TEXT NOT NULL REFERENCES consultation_threads (thread_id),
    position BIGINT NOT NULL,
    file_name TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size_bytes BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    content BYTEA NOT NULL
);
CREATE INDEX consultation_attachments_message ON consultation_attachments (message_id);

-- Retention: no thread, message or attachment row is ever deleted.
CREATE FUNCTION consultation_forbid() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'consultation records are never deleted, and messages never changed';
END;
$$;
CREATE TRIGGER consultation_threads_no_delete BEFORE DELETE ON consultation_threads
    FOR EACH ROW EXECUTE FUNCTION consultation_forbid();
CREATE TRIGGER consultation_messages_no_change BEFORE UPDATE OR DELETE ON consultation_messages
    FOR EACH ROW EXECUTE FUNCTION consultation_forbid();
