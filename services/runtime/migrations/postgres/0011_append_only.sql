-- Append-only tables refuse TRUNCATE too (row triggers do not fire on it), and attachments are
-- protected like messages. See the SQLite twin for comments.

CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER consultation_threads_no_truncate BEFORE TRUNCATE ON consultation_threads
    FOR EACH STATEMENT EXECUTE FUNCTION consultation_forbid();
CREATE TRIGGER consultation_messages_no_truncate BEFORE TRUNCATE ON consultation_messages
    FOR EACH STATEMENT EXECUTE FUNCTION consultation_forbid();
CREATE TRIGGER consultation_attachments_no_change BEFORE UPDATE OR DELETE ON consultation_attachments
    FOR EACH ROW EXECUTE FUNCTION consultation_forbid();
CREATE TRIGGER consultation_attachments_no_truncate BEFORE TRUNCATE ON consultation_attachments
    FOR EACH STATEMENT EXECUTE FUNCTION consultation_forbid();
