-- Moves of a listed patient between GPs' lists. See the SQLite twin for comments.
CREATE TABLE booking_list_moves (
    move_id TEXT PRIMARY KEY,
    patient_nin TEXT NOT NULL,
    from_gp_uid TEXT NOT NULL REFERENCES booking_gps (gp_uid),
    to_gp_uid TEXT NOT NULL REFERENCES booking_gps (gp_uid),
    registry_reference TEXT NOT NULL,
    moved_at BIGINT NOT NULL,
    moved_by TEXT NOT NULL
);
CREATE INDEX booking_list_moves_patient ON booking_list_moves (patient_nin, moved_at);
