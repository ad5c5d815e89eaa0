-- A rush flow's booking writes as the booking service commits them, with the guarantees' rows,
-- for pgbench (`econsult-load --efficiency` runs it against the floor's scratch database,
-- beside booking.sql, whose least form it extends). One pgbench transaction is one flow's pair,
-- HoldSlot then Book, with the statements the product sends (taken from PostgreSQL's statement
-- log of a product run) and values of the product's sizes:
-- - FindSlots' part beyond the search itself (the search is the floor's read): the read of the
--   patient's open booking episode, and the search's access-log row. The product writes that
--   row later, with the search's episode, through booking's pending writer (several searches
--   to a statement); here it rides in the hold's transaction, so it takes no commit of its own;
-- - HoldSlot: the first statement claims the call's key and, only when it claimed it, holds
--   the slot (if it is free, of the patient's practice, not started) and releases the
--   patient's other holds; the deferred writes in one statement: the booking episode (closing
--   the patient's older open ones, then the upsert that merges the facts) and the stored
--   answer;
-- - Book: the first statement claims the key and takes the held slot; the deferred writes: the
--   episode's outcome, the appointment, the outbox event, the access-log row and the stored
--   answer with the accesses it reports. The appointment's INSERT has ON CONFLICT DO NOTHING,
--   which the product's has not: a pick of a slot that is taken already is a lost race here,
--   where the product would refuse the Book and roll back.
-- Then, for :relay_per_mille of the flows, one pass of the outbox relay in a transaction of its
-- own, as in message-guaranteed.sql: 970 per 1 000 is the product's own rate, 0.97 passes of the
-- relay's sequencing statement per rush flow (results/statements-2026-12-06e-rush-6bbec5f.txt).
-- Left out, as the rest of the product's cost: the relay's publish to Redis and the consumers
-- (stats, notify) the event sets off.
\set relay_per_mille 970
\set slot random(1, :nslots)
\set patient random(1, :nthreads)
\set key random(1, 9000000000000000000)
\set relay random(1, 1000)
SELECT request_id, patient_nin, gp_uid, gp_id, org_number, municipality_number, channel, requested_at, day,
       deadline_end, vacant, closed_in_window, earliest_offer_at, earliest_offer_working_days, own_offer_at, narrowed,
       chosen_slot_id, chosen_start_at, last_activity_at, closed_at, outcome, met_by, met_at
  FROM booking_episodes WHERE patient_nin = 'p' || :patient::text AND closed_at IS NULL AND last_activity_at > 1795997452694
 ORDER BY requested_at DESC LIMIT 1;
BEGIN;
INSERT INTO audit_log (at, subject, role, org_number, action, resource, patient_nin, trace_id, request_id, actor_nin,
                       acted_as, actor_name, actor_hpr, system_name, purpose, what, what_subject)
VALUES (1796602252694, E'idporten\x3acb64434d-7147-5fde-b484-f752150deb3f', 1, '',
        '/econsult.booking.v1.BookingService/FindSlots', E'gp\x3apgb', 'p' || :patient::text, '',
        '136eb6db8e3a4b6294b25c568a99d0b5', '', 0, '', '', '', 1, 'searched for free appointments with your GP', '');
WITH claim AS (INSERT INTO idempotency (scope, idem_key, request_hash, response, created_at)
     VALUES (E'idporten\x3acb64434d-7147-5fde-b484-f752150deb3f|/econsult.booking.v1.BookingService/HoldSlot',
             'pgb-h' || :key::text, 'a24c8103347fb6512fb96f160b2a013e6721951fa4b257d2c2e7633af6353513', '\x', 1796602252698)
     ON CONFLICT (scope, idem_key) DO NOTHING RETURNING 1 AS one),
 held AS (UPDATE booking_slots AS s SET status = 3, hold_id = 'pgb-h' || :key::text, hold_patient = 'p' || :patient::text,
          hold_expires_at = 1796602552698, hold_from_waitlist = 0, hold_request_id = 'pgb-r' || :key::text
           WHERE s.slot_id = 'pgb-' || :slot::text AND s.start_at > 1796602252698 AND s.acute_reserve = 0
             AND ((s.status = 1 OR s.status = 3) AND (s.status = 1 OR (s.status = 3 AND s.hold_expires_at <= 1796602252698)))
             AND (SELECT g.org_number FROM booking_gps g WHERE g.gp_uid = s.gp_uid)
                 = (SELECT lg.org_number FROM booking_list_members l JOIN booking_gps lg ON lg.gp_uid = l.gp_uid
                     WHERE l.patient_nin = 'p' || :patient::text)
             AND EXISTS (SELECT 1 FROM claim)
          RETURNING s.slot_id, s.start_at, s.end_at, s.modality, s.acute_reserve, s.status, s.hold_expires_at,
                    s.hold_request_id, s.gp_uid),
 released AS (UPDATE booking_slots SET status = 1, hold_id = NULL, hold_patient = NULL, hold_expires_at = NULL,
              hold_request_id = NULL
               WHERE hold_patient = 'p' || :patient::text AND status = 3 AND hold_from_waitlist = 0
                 AND slot_id <> 'pgb-' || :slot::text AND EXISTS (SELECT 1 FROM claim)
              RETURNING slot_id)
SELECT c.claimed, s.slot_id, s.start_at, s.end_at, s.modality, s.acute_reserve, s.status AS slot_status,
       s.hold_expires_at, s.hold_request_id, g.gp_id, r.slot_id AS released_id
  FROM (SELECT count(*) AS claimed FROM claim) c
  LEFT JOIN (held s JOIN booking_gps g ON g.gp_uid = s.gp_uid LEFT JOIN released r ON true) ON true;
WITH d0 AS (UPDATE booking_episodes SET closed_at = last_activity_at, outcome = 3
             WHERE patient_nin = 'p' || :patient::text AND closed_at IS NULL AND request_id <> 'pgb-r' || :key::text
               AND requested_at < 1796602252694),
     d1 AS (INSERT INTO booking_episodes (request_id, patient_nin, gp_uid, gp_id, org_number, municipality_number, channel,
              requested_at, day, deadline_end, vacant, closed_in_window, earliest_offer_at, earliest_offer_working_days,
              own_offer_at, narrowed, chosen_slot_id, chosen_start_at, last_activity_at, closed_at, outcome, met_by, met_at)
            VALUES ('pgb-r' || :key::text, 'p' || :patient::text, 'pgb-gp', 'pgb', '999999999', '0301', 1, 1796602252694,
                    '2026-12-07', 1797289200000, 0, 0, 1796688000000, 1, 1796688000000, 0, 'pgb-' || :slot::text,
                    1796689800000, 1796602252698, NULL, 0, 0, NULL)
            ON CONFLICT (request_id) DO UPDATE SET
              earliest_offer_at = CASE WHEN booking_episodes.earliest_offer_at IS NULL OR excluded.earliest_offer_at < booking_episodes.earliest_offer_at THEN excluded.earliest_offer_at ELSE booking_episodes.earliest_offer_at END,
              earliest_offer_working_days = CASE WHEN booking_episodes.earliest_offer_at IS NULL OR excluded.earliest_offer_at < booking_episodes.earliest_offer_at THEN excluded.earliest_offer_working_days ELSE booking_episodes.earliest_offer_working_days END,
              own_offer_at = CASE WHEN booking_episodes.own_offer_at IS NULL OR excluded.own_offer_at < booking_episodes.own_offer_at THEN excluded.own_offer_at ELSE booking_episodes.own_offer_at END,
              narrowed = CASE WHEN excluded.last_activity_at >= booking_episodes.last_activity_at THEN excluded.narrowed ELSE booking_episodes.narrowed END,
              chosen_slot_id = CASE WHEN booking_episodes.closed_at IS NULL AND excluded.chosen_slot_id IS NOT NULL THEN excluded.chosen_slot_id ELSE booking_episodes.chosen_slot_id END,
              chosen_start_at = CASE WHEN booking_episodes.closed_at IS NULL AND excluded.chosen_slot_id IS NOT NULL THEN excluded.chosen_start_at ELSE booking_episodes.chosen_start_at END,
              last_activity_at = CASE WHEN excluded.last_activity_at > booking_episodes.last_activity_at THEN excluded.last_activity_at ELSE booking_episodes.last_activity_at END,
              closed_at = COALESCE(booking_episodes.closed_at, excluded.closed_at),
              outcome = CASE WHEN booking_episodes.closed_at IS NULL THEN excluded.outcome ELSE booking_episodes.outcome END,
              met_at = CASE WHEN booking_episodes.met_by = 0 THEN excluded.met_at ELSE booking_episodes.met_at END,
              met_by = CASE WHEN booking_episodes.met_by = 0 THEN excluded.met_by ELSE booking_episodes.met_by END
            WHERE booking_episodes.patient_nin = excluded.patient_nin),
     d2 AS (UPDATE idempotency SET response = convert_to(repeat('x', 327), 'UTF8'), accesses = '[]'
             WHERE scope = E'idporten\x3acb64434d-7147-5fde-b484-f752150deb3f|/econsult.booking.v1.BookingService/HoldSlot'
               AND idem_key = 'pgb-h' || :key::text)
SELECT 1;
END;
BEGIN;
WITH claim AS (INSERT INTO idempotency (scope, idem_key, request_hash, response, created_at)
     VALUES (E'idporten\x3acb64434d-7147-5fde-b484-f752150deb3f|/econsult.booking.v1.BookingService/Book',
             'pgb-b' || :key::text, 'cb43a9bd07d0946549431d572f02d85e2b77075ce6afae99ebe91ba8380a4d22', '\x', 1796602252701)
     ON CONFLICT (scope, idem_key) DO NOTHING RETURNING 1 AS one),
 taken AS (UPDATE booking_slots AS s SET status = 2, hold_id = NULL, hold_patient = NULL, hold_expires_at = NULL
            WHERE s.hold_id = 'pgb-h' || :key::text AND s.hold_patient = 'p' || :patient::text AND s.status = 3
              AND s.hold_expires_at > 1796602252701 AND s.start_at > 1796602252701
              AND (SELECT g.org_number FROM booking_gps g WHERE g.gp_uid = s.gp_uid)
                  = (SELECT lg.org_number FROM booking_list_members l JOIN booking_gps lg ON lg.gp_uid = l.gp_uid
                      WHERE l.patient_nin = 'p' || :patient::text)
              AND EXISTS (SELECT 1 FROM claim)
           RETURNING s.slot_id, s.start_at, s.end_at, s.modality, s.acute_reserve, s.status, s.hold_expires_at,
                     s.hold_request_id, s.gp_uid)
SELECT c.claimed, s.slot_id, s.start_at, s.end_at, s.modality, s.acute_reserve, s.status AS slot_status,
       s.hold_expires_at, s.hold_request_id, g.gp_id, g.gp_uid, g.org_number, g.municipality_number, g.hpr_number
  FROM (SELECT count(*) AS claimed FROM claim) c LEFT JOIN (taken s JOIN booking_gps g ON g.gp_uid = s.gp_uid) ON true;
WITH d0 AS (UPDATE booking_episodes SET
              chosen_slot_id = CASE WHEN closed_at IS NULL THEN 'pgb-' || :slot::text ELSE chosen_slot_id END,
              chosen_start_at = CASE WHEN closed_at IS NULL THEN 1796689800000 ELSE chosen_start_at END,
              last_activity_at = CASE WHEN last_activity_at < 1796602252703 THEN 1796602252703 ELSE last_activity_at END,
              outcome = CASE WHEN closed_at IS NULL THEN 1 ELSE outcome END,
              closed_at = COALESCE(closed_at, 1796602252703)
             WHERE patient_nin = 'p' || :patient::text
               AND request_id = COALESCE('pgb-r' || :key::text, (SELECT o.request_id FROM booking_episodes o
                     WHERE o.patient_nin = 'p' || :patient::text AND o.closed_at IS NULL AND o.last_activity_at > 1795997452703
                     ORDER BY o.requested_at DESC LIMIT 1))),
     d1 AS (INSERT INTO booking_appointments (appointment_id, slot_id, gp_uid, patient_nin, status, reason, booked_at,
              rescheduled_from, request_id, booked_by_nin, booked_by_relation, booked_by_name)
            VALUES (gen_random_uuid()::text, 'pgb-' || :slot::text, 'pgb-gp', 'p' || :patient::text, 1, 'load test',
                    1796602252703, NULL, 'pgb-r' || :key::text, '', 0, '')
            ON CONFLICT DO NOTHING),
     d2 AS (INSERT INTO outbox (event_id, topic, org_number, route_key, payload, created_at, trace_parent)
            VALUES (gen_random_uuid()::text, 'booking.created', '999999999', 'DWE3D1UtXwfgbsSiicfM-NZrZ2BwNtZOPylmZWEQWyA',
                    E'{"appointment_id"\x3a"01a24dd6-cd9f-7777-8eb4-52892367a5b5","slot_id"\x3a"pgb-' || :slot::text || E'","gp_id"\x3a"pgb","org_number"\x3a"999999999","municipality_number"\x3a"0301","modality"\x3a"in_person","start_ms"\x3a1796689800000,"end_ms"\x3a1796690700000,"status"\x3a"booked","booked_at_ms"\x3a1796602252703,"cancelled_at_ms"\x3anull,"cancelled_by"\x3anull,"late_cancellation"\x3afalse,"rescheduled_from"\x3anull,"gp_hpr_number"\x3a"7000000"}',
                    1796602252703, '')),
     d3 AS (INSERT INTO audit_log (at, subject, role, org_number, action, resource, patient_nin, trace_id, request_id,
              actor_nin, acted_as, actor_name, actor_hpr, system_name, purpose, what, what_subject)
            VALUES (1796602252703, E'idporten\x3acb64434d-7147-5fde-b484-f752150deb3f', 1, '',
                    '/econsult.booking.v1.BookingService/Book', E'appointment\x3a01a24dd6-cd9f-7777-8eb4-52892367a5b5',
                    'p' || :patient::text, '', '1e8c5695a1a748338cfda67e35390260', '', 0, '', '', '', 1,
                    'booked an appointment on 2026-12-08 01:30', '')),
     d4 AS (UPDATE idempotency SET response = convert_to(repeat('x', 504), 'UTF8'),
              accesses = E'[{"action"\x3a"/econsult.booking.v1.BookingService/Book","resource"\x3a"appointment\x3a01a24dd6-cd9f-7777-8eb4-52892367a5b5","patient_nin"\x3a"p' || :patient::text || E'","what"\x3a"booked an appointment on 2026-12-08 01\x3a30","what_subject"\x3a"","purpose"\x3a1}]'
             WHERE scope = E'idporten\x3acb64434d-7147-5fde-b484-f752150deb3f|/econsult.booking.v1.BookingService/Book'
               AND idem_key = 'pgb-b' || :key::text)
SELECT 1;
END;
\if :relay <= :relay_per_mille
BEGIN;
SELECT pg_advisory_xact_lock(1298);
WITH marked AS (UPDATE outbox SET published_at = 1796602252915
                 WHERE seq > (SELECT COALESCE(MAX(seq), 0) FROM outbox) - 256 AND published_at IS NULL)
UPDATE outbox SET seq = (SELECT COALESCE(MAX(seq), 0) FROM outbox) + n.rn
  FROM (SELECT id, ROW_NUMBER() OVER (ORDER BY id) AS rn FROM outbox WHERE seq IS NULL ORDER BY id LIMIT 256) AS n
 WHERE outbox.id = n.id
RETURNING outbox.seq AS seq, outbox.event_id AS event_id, outbox.topic AS topic,
          outbox.org_number AS org_number, outbox.payload AS payload, outbox.created_at AS created_at,
          outbox.trace_parent AS trace_parent;
END;
\endif
