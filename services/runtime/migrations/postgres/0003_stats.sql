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

-- Appointments already counted as a contact: a video consultation can be reported held both by
-- the EHR (booking.attended) and by the GP in the video session (signalling.session_ended);
-- it is one contact.
CREATE TABLE stats_counted_appointments (
    appointment_id TEXT PRIMARY KEY
);

-- Video sessions by day of start: held or not, connected or not, total connected time.
CREATE TABLE stats_video_sessions (
    day TEXT NOT NULL,
    org_number TEXT NOT NULL,
    municipality_number TEXT NOT NULL,
    gp_id TEXT NOT NULL,
    connected BIGINT NOT NULL,
    held BIGINT NOT NULL,
    n BIGINT NOT NULL,
    connected_ms BIGINT NOT NULL,
    PRIMARY KEY (day, org_number, municipality_number, gp_id, connected, held)
);

-- First responses to text consultations by day of submission: working days to the first
-- response (15 = fifteen or more) and whether it came before the SLA due time.
CREATE TABLE stats_consultation_responses (
    day TEXT NOT NULL,
    org_number TEXT NOT NULL,
    municipality_number TEXT NOT NULL,
    gp_id TEXT NOT NULL,
    category TEXT NOT NULL,
    working_days BIGINT NOT NULL,
    within_sla BIGINT NOT NULL,
    n BIGINT NOT NULL,
    PRIMARY KEY (day, org_number, municipality_number, gp_id, category, working_days, within_sla)
);
