-- A message write as the consultation service commits it, with the guarantees' rows, for
-- pgbench (`econsult-load --efficiency` runs it against the floor's scratch database, beside
-- message.sql, whose least form it extends). Each transaction is one of the messaging flow's
-- three writes, a third each: StartConsultation, SendMessage (the patient) and Reply (the
-- practice), with the statements the product sends (taken from PostgreSQL's statement log of a
-- product run) and values of the product's sizes:
-- - the first statement claims the call's idempotency key and, only when it claimed it, locks
--   what the command changes: the thread with the practice's closure days (send, reply), or
--   the patient's quota lock (start, then its reads of the GP, the open threads and the
--   practice's settings);
-- - the deferred writes in one statement: the message, the thread, the outbox events, the
--   access-log row (reply), and the stored answer with the accesses it reports;
-- - COMMIT.
-- Then, for :relay_per_mille of the transactions, one pass of the outbox relay in a
-- transaction of its own (its marking and sequencing statement), serialised by an advisory lock
-- as the one leader serialises it: the events' total order, on which delivery to every
-- subscriber exactly once and in order rests. 433 per 1 000 is the product's own rate, 1.30
-- passes per messaging flow of three message writes
-- (results/statements-2026-12-06e-messaging-a077ddb.txt). The pass marks the previous pass's
-- events published by their range of seq, as the relay does (it knows the range; here it is
-- the last 256 seqs, by the index of unpublished events either way), and reads the highest
-- seq from the outbox, which the leader keeps instead. The replayed pass is four statements
-- (BEGIN, the lock, the pass, END) where the product's is one.
-- Left out, as the rest of the product's cost: the streams' reads and their access-log rows,
-- the relay's publish to Redis, the consumers' bookkeeping.
\set relay_per_mille 433
\set kind random(1, 3)
\set thread random(1, :nthreads)
\set key random(1, 9000000000000000000)
\set relay random(1, 1000)
BEGIN;
\if :kind = 1
WITH claim AS (INSERT INTO idempotency (scope, idem_key, request_hash, response, created_at)
     VALUES (E'idporten\x3apgbench|/econsult.consultation.v1.ConsultationService/StartConsultation', 'pgb-' || :key::text,
             'd4c8816c8084293cadb4d757956e616a1aedeaeb638322afa03432da4a79c78b', '\x', 1796602248964)
     ON CONFLICT (scope, idem_key) DO NOTHING RETURNING 1 AS one)
SELECT c.claimed, CASE WHEN c.claimed > 0 THEN pg_advisory_xact_lock(hashtextextended(E'consultation-quota\x3ap' || :thread::text, 0))::text END AS locked
  FROM (SELECT count(*) AS claimed FROM claim) c;
SELECT g.gp_id, g.hpr_number, g.display_name, g.practice_name, g.org_number, g.municipality_number, g.list_status,
       (SELECT string_agg(c.closed_on, ',') FROM booking_closures c WHERE c.org_number = g.org_number) AS closures
  FROM booking_list_members l JOIN booking_gps g ON g.gp_uid = l.gp_uid WHERE l.patient_nin = 'p' || :thread::text;
SELECT COUNT(*) AS n FROM consultation_threads WHERE patient_nin = 'p' || :thread::text AND state IN (1, 2, 3);
SELECT response_working_days FROM consultation_settings WHERE org_number = '999999999';
WITH d0 AS (INSERT INTO consultation_threads (thread_id, patient_nin, gp_id, gp_display_name, org_number, municipality_number,
              category, subject, submitted_at, due_at, started_by_nin, started_by_relation, started_by_name, confidential,
              booking_request_id, state, first_response_at, assigned_hpr, last_seq, patient_read_seq, practice_read_seq,
              outcome, tariff_code, closed_at, updated_at)
            VALUES ('pgb-n' || :key::text, 'p' || :thread::text, 'pgb', 'pgbench', '999999999', '0301', 1, 'Sår hals', 1796602248966,
                    1797207048966, '', 0, '', 0, NULL, 1, NULL, '', 1, 1, 0, '', '', NULL, 1796602248966)),
     d1 AS (INSERT INTO consultation_messages (message_id, thread_id, seq, author, author_hpr, body, sent_at)
            VALUES (gen_random_uuid()::text, 'pgb-n' || :key::text, 1, 1, '',
                    'I have had a cough for two weeks. Should I come in?', 1796602248966)),
     d2 AS (INSERT INTO outbox (event_id, topic, org_number, route_key, payload, created_at, trace_parent)
            VALUES (gen_random_uuid()::text, 'consultation.started', '999999999', '2dAUmkSVqbnRc3FSjrslplFS2NCyyKECLRz7-aLY4to',
                    '{"thread_id":"pgb-n' || :key::text || E'","gp_id"\x3a"pgb","org_number"\x3a"999999999","municipality_number"\x3a"0301","category"\x3a"e_consultation","submitted_at_ms"\x3a1796602248966,"due_at_ms"\x3a1797207048966,"first_response_at_ms"\x3anull,"response_working_days"\x3anull,"response_working_hours"\x3anull,"closed_at_ms"\x3anull,"tariff_code"\x3anull,"outcome"\x3anull}',
                    1796602248967, '')),
     d3 AS (INSERT INTO outbox (event_id, topic, org_number, route_key, payload, created_at, trace_parent)
            VALUES (gen_random_uuid()::text, 'consultation.message', '999999999', '2dAUmkSVqbnRc3FSjrslplFS2NCyyKECLRz7-aLY4to',
                    E'{"message_id"\x3a"01a24dd6-bf07-745e-ad54-a294ed3350ff","seq"\x3a1,"thread_id"\x3a"pgb-n' || :key::text || '"}',
                    1796602248967, '')),
     d4 AS (UPDATE idempotency SET response = convert_to(repeat('x', 543), 'UTF8'), accesses = '[]'
             WHERE scope = E'idporten\x3apgbench|/econsult.consultation.v1.ConsultationService/StartConsultation' AND idem_key = 'pgb-' || :key::text)
SELECT 1;
\else
-- SendMessage (kind 2) and Reply: the same first statement, with the call's scope.
WITH claim AS (INSERT INTO idempotency (scope, idem_key, request_hash, response, created_at)
     VALUES (CASE WHEN :kind = 2 THEN E'idporten\x3apgbench|/econsult.consultation.v1.ConsultationService/SendMessage'
                  ELSE 'load-epj-999999999|/econsult.consultation.v1.ConsultationService/Reply' END,
             'pgb-' || :key::text,
             'e26fc66ef51320c6526df3076c9afdde20f92fb631bcf08df56ddab11cc0db05', '\x', 1796602248973)
     ON CONFLICT (scope, idem_key) DO NOTHING RETURNING 1 AS one)
SELECT c.claimed, t.* FROM (SELECT count(*) AS claimed FROM claim) c LEFT JOIN (
  SELECT thread_id, patient_nin, gp_id, gp_display_name, org_number, municipality_number,
         category, subject, state, submitted_at, due_at, first_response_at, assigned_hpr, last_seq,
         patient_read_seq, practice_read_seq, outcome, tariff_code, closed_at, updated_at,
         started_by_nin, started_by_relation, started_by_name, confidential, booking_request_id,
         (SELECT string_agg(c.closed_on, ',') FROM booking_closures c
           WHERE c.org_number = consultation_threads.org_number) AS closures
    FROM consultation_threads WHERE thread_id = 'pgb-t' || :thread::text AND EXISTS (SELECT 1 FROM claim)
     FOR NO KEY UPDATE) t ON true \gset
\if :kind = 2
WITH d0 AS (INSERT INTO consultation_messages (message_id, thread_id, seq, author, author_hpr, body, sent_at)
            VALUES (gen_random_uuid()::text, 'pgb-t' || :thread::text, :last_seq + 1, 1, '',
                    'It is worse in the evening, and the fever came back last night.', 1796602248974)),
     d1 AS (UPDATE consultation_threads SET state = 2, first_response_at = NULL, assigned_hpr = '',
            last_seq = :last_seq + 1, patient_read_seq = :last_seq + 1, practice_read_seq = :practice_read_seq,
            outcome = '', tariff_code = '', closed_at = NULL, updated_at = 1796602248974
             WHERE thread_id = 'pgb-t' || :thread::text),
     d2 AS (INSERT INTO outbox (event_id, topic, org_number, route_key, payload, created_at, trace_parent)
            VALUES (gen_random_uuid()::text, 'consultation.message', '999999999', '2dAUmkSVqbnRc3FSjrslplFS2NCyyKECLRz7-aLY4to',
                    '{"message_id":"01a24dd6-bf0e-7227-ab71-b8836fd2c59c","seq":' || (:last_seq + 1)::text || ',"thread_id":"pgb-t' || :thread::text || '"}',
                    1796602248974, '')),
     d3 AS (UPDATE idempotency SET response = convert_to(repeat('x', 539), 'UTF8'), accesses = '[]'
             WHERE scope = E'idporten\x3apgbench|/econsult.consultation.v1.ConsultationService/SendMessage' AND idem_key = 'pgb-' || :key::text)
SELECT 1;
\else
WITH d0 AS (INSERT INTO consultation_messages (message_id, thread_id, seq, author, author_hpr, body, sent_at)
            VALUES (gen_random_uuid()::text, 'pgb-t' || :thread::text, :last_seq + 1, 2, '7000001',
                    'How high is the fever? Please measure it tonight & tell us.', 1796602248974)),
     d1 AS (UPDATE consultation_threads SET state = 3, first_response_at = 1796602248974, assigned_hpr = '7000001',
            last_seq = :last_seq + 1, patient_read_seq = :patient_read_seq, practice_read_seq = :last_seq + 1,
            outcome = '', tariff_code = '', closed_at = NULL, updated_at = 1796602248974
             WHERE thread_id = 'pgb-t' || :thread::text),
     d2 AS (INSERT INTO audit_log (at, subject, role, org_number, action, resource, patient_nin, trace_id,
                                   request_id, actor_nin, acted_as, actor_name, actor_hpr, system_name,
                                   purpose, what, what_subject)
            VALUES (1796602248974, 'load-epj-999999999', 3, '999999999',
                    '/econsult.consultation.v1.ConsultationService/Reply', E'consultation\x3apgb-t' || :thread::text,
                    'p' || :thread::text, '', '7afea155dd1a446cae723f9a6ae2c780', '', 0, 'Kari Dev-Sekretaer', '9900001',
                    'load-epj-999999999', 2, 'replied to your e-consultation', 'Sår hals')),
     d3 AS (INSERT INTO outbox (event_id, topic, org_number, route_key, payload, created_at, trace_parent)
            VALUES (gen_random_uuid()::text, 'consultation.message', '999999999', '2dAUmkSVqbnRc3FSjrslplFS2NCyyKECLRz7-aLY4to',
                    '{"message_id":"01a24dd6-bf0e-7227-ab71-b8836fd2c59c","seq":' || (:last_seq + 1)::text || ',"thread_id":"pgb-t' || :thread::text || '"}',
                    1796602248974, '')),
     d4 AS (INSERT INTO outbox (event_id, topic, org_number, route_key, payload, created_at, trace_parent)
            VALUES (gen_random_uuid()::text, 'consultation.first_response', '999999999', '2dAUmkSVqbnRc3FSjrslplFS2NCyyKECLRz7-aLY4to',
                    '{"thread_id":"pgb-t' || :thread::text || E'","gp_id"\x3a"pgb","org_number"\x3a"999999999","municipality_number"\x3a"0301","category"\x3a"e_consultation","submitted_at_ms"\x3a1796602248966,"due_at_ms"\x3a1797207048966,"first_response_at_ms"\x3a1796602248974,"response_working_days"\x3a0,"response_working_hours"\x3a0.0,"closed_at_ms"\x3anull,"tariff_code"\x3anull,"outcome"\x3anull}',
                    1796602248974, '')),
     d5 AS (INSERT INTO outbox (event_id, topic, org_number, route_key, payload, created_at, trace_parent)
            VALUES (gen_random_uuid()::text, 'consultation.state', '999999999', '2dAUmkSVqbnRc3FSjrslplFS2NCyyKECLRz7-aLY4to',
                    '{"thread_id":"pgb-t' || :thread::text || E'","gp_id"\x3a"pgb","org_number"\x3a"999999999","municipality_number"\x3a"0301","category"\x3a"e_consultation","submitted_at_ms"\x3a1796602248966,"due_at_ms"\x3a1797207048966,"first_response_at_ms"\x3a1796602248974,"response_working_days"\x3a0,"response_working_hours"\x3a0.0,"closed_at_ms"\x3anull,"tariff_code"\x3anull,"outcome"\x3anull}',
                    1796602248974, '')),
     d6 AS (UPDATE idempotency SET response = convert_to(repeat('x', 623), 'UTF8'),
              accesses = E'[{"action"\x3a"/econsult.consultation.v1.ConsultationService/Reply","resource"\x3a"consultation\x3apgb-t' || :thread::text || '","patient_nin":"p' || :thread::text || E'","what"\x3a"replied to your e-consultation","what_subject"\x3a"Sår hals","purpose"\x3a2}]'
             WHERE scope = 'load-epj-999999999|/econsult.consultation.v1.ConsultationService/Reply' AND idem_key = 'pgb-' || :key::text)
SELECT 1;
\endif
\endif
END;
\if :relay <= :relay_per_mille
BEGIN;
SELECT pg_advisory_xact_lock(1298);
WITH marked AS (UPDATE outbox SET published_at = 1796602248990
                 WHERE seq > (SELECT COALESCE(MAX(seq), 0) FROM outbox) - 256 AND published_at IS NULL)
UPDATE outbox SET seq = (SELECT COALESCE(MAX(seq), 0) FROM outbox) + n.rn
  FROM (SELECT id, ROW_NUMBER() OVER (ORDER BY id) AS rn FROM outbox WHERE seq IS NULL ORDER BY id LIMIT 256) AS n
 WHERE outbox.id = n.id
RETURNING outbox.seq AS seq, outbox.event_id AS event_id, outbox.topic AS topic,
          outbox.org_number AS org_number, outbox.payload AS payload, outbox.created_at AS created_at,
          outbox.trace_parent AS trace_parent;
END;
\endif
