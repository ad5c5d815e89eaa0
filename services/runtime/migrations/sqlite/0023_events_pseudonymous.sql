-- Events carry no identity numbers (issue 21): the outbox `route_key` of an event about a
-- patient is now their pseudonymous key (runtime::pseudonym), and bodies name the patient by
-- an id only. Events written before kept the number in both: clear their route key (such an
-- event no longer reaches a patient's own stream, which now asks by the pseudonymous key) and
-- drop the number fields from their bodies (consumers resolve the patient by the event's id).
-- Copies already on a Redis stream stay until the stream is trimmed.
UPDATE outbox
SET route_key = '',
    payload = CASE
        WHEN payload LIKE '%\_nin"%' ESCAPE '\' AND json_valid(payload)
        THEN json_remove(payload, '$.patient_nin', '$.giver_nin', '$.holder_nin')
        ELSE payload
    END
WHERE route_key <> '' OR payload LIKE '%\_nin"%' ESCAPE '\';
