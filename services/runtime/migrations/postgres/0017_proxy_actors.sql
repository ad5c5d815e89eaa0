-- Acting for others (issue 24): who acted beside whom it was about. See the SQLite twin.

ALTER TABLE booking_appointments ADD COLUMN booked_by_nin TEXT NOT NULL DEFAULT '';
ALTER TABLE booking_appointments ADD COLUMN booked_by_relation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE consultation_threads ADD COLUMN started_by_nin TEXT NOT NULL DEFAULT '';
ALTER TABLE consultation_threads ADD COLUMN started_by_relation BIGINT NOT NULL DEFAULT 0;
