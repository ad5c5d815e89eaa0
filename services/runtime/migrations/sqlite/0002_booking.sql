-- Booking service tables (owned by services/booking). Times are Unix milliseconds; flags 0/1;
-- enums use the numbers of econsult.booking.v1.

CREATE TABLE booking_gps (
    gp_uid TEXT PRIMARY KEY,
    org_number TEXT NOT NULL,
    gp_id TEXT NOT NULL,
    hpr_number TEXT NOT NULL,
    display_name TEXT NOT NULL,
    municipality_number TEXT NOT NULL,
    list_capacity BIGINT NOT NULL CHECK (list_capacity BETWEEN 1 AND 2500),
    list_status BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (org_number, gp_id)
);

-- A person is on exactly one GP's list.
CREATE TABLE booking_list_members (
    patient_nin TEXT PRIMARY KEY,
    gp_uid TEXT NOT NULL REFERENCES booking_gps (gp_uid),
    added_at BIGINT NOT NULL
);
CREATE INDEX booking_list_members_gp ON booking_list_members (gp_uid);

CREATE TABLE booking_closures (
    org_number TEXT NOT NULL,
    closed_on TEXT NOT NULL,
    PRIMARY KEY (org_number, closed_on)
);

-- status: 1 free, 2 busy, 3 busy-tentative (held), 4 busy-unavailable (withdrawn).
-- A hold lives on the slot row; a hold whose hold_expires_at has passed counts as free.
CREATE TABLE booking_slots (
    slot_id TEXT PRIMARY KEY,
    gp_uid TEXT NOT NULL REFERENCES booking_gps (gp_uid),
    start_at BIGINT NOT NULL,
    end_at BIGINT NOT NULL,
    modality BIGINT NOT NULL,
    acute_reserve BIGINT NOT NULL,
    status BIGINT NOT NULL,
    hold_id TEXT UNIQUE,
    hold_patient TEXT,
    hold_expires_at BIGINT,
    hold_from_waitlist BIGINT NOT NULL DEFAULT 0,
    hold_request_id TEXT,
    created_at BIGINT NOT NULL,
    CHECK (end_at > start_at)
);
CREATE INDEX booking_slots_gp_start ON booking_slots (gp_uid, start_at);
CREATE INDEX booking_slots_hold_patient ON booking_slots (hold_patient) WHERE hold_patient IS NOT NULL;

-- status: 1 booked, 2 arrived, 3 fulfilled, 4 cancelled, 5 noshow.
CREATE TABLE booking_appointments (
    appointment_id TEXT PRIMARY KEY,
    slot_id TEXT NOT NULL REFERENCES booking_slots (slot_id),
    gp_uid TEXT NOT NULL REFERENCES booking_gps (gp_uid),
    patient_nin TEXT NOT NULL,
    status BIGINT NOT NULL,
    reason TEXT NOT NULL,
    booked_at BIGINT NOT NULL,
    cancelled_at BIGINT,
    cancelled_by BIGINT,
    late_cancellation BIGINT NOT NULL DEFAULT 0,
    rescheduled_from TEXT,
    request_id TEXT
);
-- The double-booking guard: at most one appointment that is not cancelled per slot.
CREATE UNIQUE INDEX booking_appointments_one_per_slot ON booking_appointments (slot_id) WHERE status <> 4;
CREATE INDEX booking_appointments_patient ON booking_appointments (patient_nin);

-- priority: 0 normal, 1 first in line (the practice cancelled the patient's appointment).
CREATE TABLE booking_waitlist (
    entry_id TEXT PRIMARY KEY,
    gp_uid TEXT NOT NULL REFERENCES booking_gps (gp_uid),
    patient_nin TEXT NOT NULL,
    latest_date TEXT NOT NULL,
    modality BIGINT NOT NULL,
    priority BIGINT NOT NULL,
    joined_at BIGINT NOT NULL,
    active BIGINT NOT NULL,
    offered_hold_id TEXT
);
CREATE UNIQUE INDEX booking_waitlist_one_active ON booking_waitlist (gp_uid, patient_nin) WHERE active = 1;
CREATE INDEX booking_waitlist_queue ON booking_waitlist (gp_uid, active, priority, joined_at);

-- Every FindSlots by a patient: the five-working-day measurement.
CREATE TABLE booking_requests (
    request_id TEXT PRIMARY KEY,
    patient_nin TEXT NOT NULL,
    gp_uid TEXT NOT NULL,
    requested_at BIGINT NOT NULL,
    earliest_offer_at BIGINT,
    earliest_offer_working_days BIGINT,
    within_target BIGINT NOT NULL,
    breach_reason BIGINT NOT NULL,
    chosen_slot_id TEXT,
    chosen_working_days BIGINT
);
