-- Acting for others (issue 24): records store who acted beside the patient they are about.
-- `*_nin` is the acting person's identity number ('' when the patient acted themselves) and
-- `*_relation` how they are related (0 the patient, 1 parent, 2 fullmakt holder). A thread a
-- parent started is the one a parent of a child from 12 to 16 may see.

ALTER TABLE booking_appointments ADD COLUMN booked_by_nin TEXT NOT NULL DEFAULT '';
ALTER TABLE booking_appointments ADD COLUMN booked_by_relation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE consultation_threads ADD COLUMN started_by_nin TEXT NOT NULL DEFAULT '';
ALTER TABLE consultation_threads ADD COLUMN started_by_relation BIGINT NOT NULL DEFAULT 0;
