-- Events carry no identity numbers (issue 21). See the SQLite twin: clear the route key of
-- events written before (it was the patient's identity number) and drop the number fields
-- from their bodies. Only bodies with such a field are rewritten (serde wrote them: JSON).
UPDATE outbox
SET route_key = '',
    payload = CASE
        WHEN payload LIKE '%\_nin"%'
        THEN ((payload::jsonb) - 'patient_nin' - 'giver_nin' - 'holder_nin')::text
        ELSE payload
    END
WHERE route_key <> '' OR payload LIKE '%\_nin"%';
