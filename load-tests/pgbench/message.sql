-- The least a stored message can be, for pgbench (`econsult-load --efficiency` runs it against a
-- scratch database migrated with the real schema and seeded with :nthreads open threads): take
-- the thread's next sequence number and insert the message under it, in one transaction.
-- `(thread_id, seq)` is unique, as in the service. Used as the floor of every message write of
-- the messaging flow (StartConsultation, SendMessage, Reply).
\set thread random(1, :nthreads)
BEGIN;
UPDATE consultation_threads SET last_seq = last_seq + 1, updated_at = 0
 WHERE thread_id = 'pgb-t' || :thread RETURNING last_seq AS seq \gset
INSERT INTO consultation_messages (message_id, thread_id, seq, author, author_hpr, body, sent_at)
 VALUES (gen_random_uuid()::text, 'pgb-t' || :thread, :seq, 1, '',
         'Hei, jeg har hatt vondt i halsen i fem dager og lurer på om jeg bør komme inn.', 0);
END;
