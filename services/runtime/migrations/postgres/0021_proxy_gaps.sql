-- Acting for others (issue 24), the remaining gaps. See the SQLite twin.
CREATE TABLE proxy_protected_addresses (
    nin TEXT PRIMARY KEY,
    noted_at BIGINT NOT NULL
);
ALTER TABLE booking_appointments ADD COLUMN booked_by_name TEXT NOT NULL DEFAULT '';
ALTER TABLE consultation_threads ADD COLUMN started_by_name TEXT NOT NULL DEFAULT '';
ALTER TABLE consultation_threads ADD COLUMN confidential BIGINT NOT NULL DEFAULT 0;
ALTER TABLE signalling_participants ADD COLUMN actor_nin TEXT NOT NULL DEFAULT '';
ALTER TABLE signalling_participants ADD COLUMN actor_relation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE signalling_participants ADD COLUMN actor_name TEXT NOT NULL DEFAULT '';
