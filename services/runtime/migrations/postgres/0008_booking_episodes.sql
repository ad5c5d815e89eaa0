-- Booking requests as episodes (fastlegeforskriften § 22): one patient's one need for an
-- appointment, opened by the first search, by the practice booking after the patient phoned, or
-- by an e-consultation converted to a booking; closed by a booking or by inactivity. Further
-- searches update the open episode. The figure (within five working days, met by the own GP,
-- breaches, patient preferences) is computed from the facts below by
-- econsult_booking::episodes::accessibility; every write merges facts (earliest offers only get
-- earlier, activity only later, a closed episode stays closed), so writers may race and repeat.
CREATE TABLE booking_episodes (
    request_id TEXT PRIMARY KEY,
    patient_nin TEXT NOT NULL,
    -- The patient's list GP when the episode opened, and where it is counted.
    gp_uid TEXT NOT NULL,
    gp_id TEXT NOT NULL,
    org_number TEXT NOT NULL,
    municipality_number TEXT NOT NULL,
    -- 1 online, 2 practice, 3 e_consultation.
    channel BIGINT NOT NULL,
    -- Day 0: the instant and the Oslo date of the request.
    requested_at BIGINT NOT NULL,
    day TEXT NOT NULL,
    -- Start (ms) of the Oslo day after the fifth national working day after day 0: an offer
    -- starting before it is within the target. NULL for episodes migrated from booking_requests.
    deadline_end BIGINT,
    -- The list had no GP when the episode opened.
    vacant BIGINT NOT NULL,
    -- The practice was closed on a national working day from day 0 to the deadline.
    closed_in_window BIGINT NOT NULL,
    -- Earliest slot the practice offered (own GP first, then colleagues/locum), whatever the
    -- patient's filters, and its national working days from day 0; earliest of the own GP.
    earliest_offer_at BIGINT,
    earliest_offer_working_days BIGINT,
    own_offer_at BIGINT,
    -- The patient's latest search showed no slot within the target though one existed.
    narrowed BIGINT NOT NULL,
    -- What the patient (or the practice for them) held or booked.
    chosen_slot_id TEXT,
    chosen_start_at BIGINT,
    last_activity_at BIGINT NOT NULL,
    closed_at BIGINT,
    -- 0 open, 1 booked, 3 expired (inactive), 4 migrated from booking_requests (counted by the
    -- old definition: one per search; not part of the episode figures).
    outcome BIGINT NOT NULL
);
CREATE INDEX booking_episodes_open ON booking_episodes (patient_nin, last_activity_at) WHERE closed_at IS NULL;
CREATE INDEX booking_episodes_day ON booking_episodes (day, org_number);

INSERT INTO booking_episodes (request_id, patient_nin, gp_uid, gp_id, org_number, municipality_number, channel,
    requested_at, day, deadline_end, vacant, closed_in_window, earliest_offer_at, earliest_offer_working_days,
    own_offer_at, narrowed, chosen_slot_id, chosen_start_at, last_activity_at, closed_at, outcome)
SELECT r.request_id, r.patient_nin, r.gp_uid, COALESCE(g.gp_id, ''), COALESCE(g.org_number, ''),
    COALESCE(g.municipality_number, ''), 1, r.requested_at, '', NULL, 0, 0, r.earliest_offer_at,
    r.earliest_offer_working_days, NULL, 0, r.chosen_slot_id, NULL, r.requested_at, r.requested_at, 4
FROM booking_requests r LEFT JOIN booking_gps g ON g.gp_uid = r.gp_uid;

DROP TABLE booking_requests;
