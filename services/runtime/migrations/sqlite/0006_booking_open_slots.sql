-- Slots that can still be taken (free, or held: a lapsed hold counts as free), by GP and start.
-- FindSlots reads a GP's earliest takeable slots; through booking_slots_gp_start it had to step
-- over every booked slot before them, so it slowed down as a GP's week filled up (0.11 ms at the
-- start of a 300 flows/s rush, 0.82 ms on average over 150 s). Booked and withdrawn slots are not
-- in this index. Queries must state `(s.status = 1 OR s.status = 3)` for it to apply.
CREATE INDEX booking_slots_open ON booking_slots (gp_uid, start_at) WHERE status = 1 OR status = 3;
