-- A practice's phone number and opening hours (BookingService.SetOpeningHours). They decide
-- the answer to a patient's urgent request: phone the office the same day while it is open,
-- legevakt 116 117 otherwise (forskrift om fastlegeordning § 16 (2) a).
CREATE TABLE booking_practice_phones (
    org_number TEXT PRIMARY KEY,
    phone TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Open periods per ISO weekday (1 = Monday … 7 = Sunday), as minutes after midnight on the
-- Europe/Oslo wall clock, [opens_minute, closes_minute). Public holidays and closure days
-- (booking_closures) are closed whatever these say.
CREATE TABLE booking_opening_hours (
    org_number TEXT NOT NULL,
    weekday BIGINT NOT NULL CHECK (weekday BETWEEN 1 AND 7),
    opens_minute BIGINT NOT NULL CHECK (opens_minute >= 0),
    closes_minute BIGINT NOT NULL CHECK (closes_minute <= 1440 AND closes_minute > opens_minute),
    PRIMARY KEY (org_number, weekday, opens_minute)
);
