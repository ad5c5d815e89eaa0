-- The least a slot search can be, for pgbench (`econsult-load --efficiency`): the first twenty
-- free slots of one GP from a point in its calendar, by the (gp_uid, start_at) index the
-- service's FindSlots uses. One statement, no transaction. The floor of every read of a flow.
\set from 4000000000000 + random(1, :nslots) * 60000
SELECT slot_id, start_at, end_at, modality FROM booking_slots
 WHERE gp_uid = 'pgb-gp' AND start_at >= :from AND status = 1
 ORDER BY start_at LIMIT 20;
