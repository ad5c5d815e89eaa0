-- The booking transaction in its shortest form, for pgbench (`econsult-load --pgbench` runs it
-- against a scratch database migrated with the real schema and seeded with :nslots free slots):
-- take a free slot with a conditional UPDATE, as the booking service does, and insert the
-- appointment, which the partial unique index booking_appointments_one_per_slot guards.
-- A pick of a slot that is already taken updates and inserts nothing (a lost race).
\set slot random(1, :nslots)
\set patient random(1, 100000)
BEGIN;
UPDATE booking_slots SET status = 2, hold_id = NULL, hold_patient = NULL, hold_expires_at = NULL
 WHERE slot_id = 'pgb-' || :slot AND status = 1;
INSERT INTO booking_appointments (appointment_id, slot_id, gp_uid, patient_nin, status, reason, booked_at)
 SELECT gen_random_uuid()::text, slot_id, gp_uid, 'p' || :patient, 1, '', 0
   FROM booking_slots WHERE slot_id = 'pgb-' || :slot AND status = 2
 ON CONFLICT DO NOTHING;
END;
