-- Statistics service tables (owned by services/stats). See the SQLite twin for comments.
-- event is applied once (processed_events), so the counts equal a rebuild from the outbox.

CREATE TABLE stats_contacts (
    day TEXT NOT NULL,
    org_number TEXT NOT NULL,
    municipality_number TEXT NOT NULL,
    gp_id TEXT NOT NULL,
    contact_type TEXT NOT NULL,
    tariff_code TEXT NOT NULL,
    n BIGINT NOT NULL,
    PRIMARY KEY (day, org_number, municipality_number, gp_id, contact_type, tariff_code)
);

-- working_days: 0..14, 15 = fifteen or more, -1 = nothing offered.
CREATE TABLE stats_booking_requests (
    day TEXT NOT NULL,
    org_number TEXT NOT NULL,
    municipality_number TEXT NOT NULL,
    gp_id TEXT NOT NULL,
    working_days BIGINT NOT NULL,
    within_target BIGINT NOT NULL,
    breach_reason TEXT NOT NULL,
    n BIGINT NOT NULL,
    PRIMARY KEY (day, org_number, municipality_number, gp_id, working_days, within_target, breach_reason)
);

-- kind: booked, cancelled, late_cancellation, noshow.
CREATE TABLE stats_appointments (
    day TEXT NOT NULL,
    org_number TEXT NOT NULL,
    municipality_number TEXT NOT NULL,
    gp_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    n BIGINT NOT NULL,
    PRIMARY KEY (day, org_number, municipality_number, gp_id, kind)
);
