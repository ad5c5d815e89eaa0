-- Held slots by patient. Every lookup by hold_patient also asks for status = 3 (held), and this
-- predicate keeps the index to the holds of the moment, which is also what the planner assumes
-- without statistics. The index it replaces (WHERE hold_patient IS NOT NULL) let a generic plan
-- made before the first ANALYZE combine it with booking_slots_open, reading every open slot on
-- each HoldSlot of a patient who held one before: 21 ms instead of 0.1 ms with 440 000 slots.
DROP INDEX booking_slots_hold_patient;
CREATE INDEX booking_slots_held ON booking_slots (hold_patient) WHERE status = 3;
