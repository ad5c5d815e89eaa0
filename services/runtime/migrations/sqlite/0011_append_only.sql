-- Attachments are health records like the messages they belong to: never changed or deleted.
-- (SQLite has no TRUNCATE: a DELETE without WHERE fires the row triggers. PostgreSQL's twin
-- also refuses TRUNCATE of the append-only tables.)

CREATE TRIGGER consultation_attachments_no_delete BEFORE DELETE ON consultation_attachments
BEGIN SELECT RAISE(ABORT, 'consultation attachments are health records and are never deleted'); END;
CREATE TRIGGER consultation_attachments_no_update BEFORE UPDATE ON consultation_attachments
BEGIN SELECT RAISE(ABORT, 'consultation attachments are immutable'); END;
