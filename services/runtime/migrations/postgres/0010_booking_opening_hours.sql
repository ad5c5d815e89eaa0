-- A practice's phone number and opening hours. See the SQLite twin for comments.
CREATE TABLE booking_practice_phones (
    org_number TEXT PRIMARY KEY,
    phone TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE booking_opening_hours (
    org_number TEXT NOT NULL,
    weekday BIGINT NOT NULL CHECK (weekday BETWEEN 1 AND 7),
    opens_minute BIGINT NOT NULL CHECK (opens_minute >= 0),
    closes_minute BIGINT NOT NULL CHECK (closes_minute <= 1440 AND closes_minute > opens_minute),
    PRIMARY KEY (org_number, weekday, opens_minute)
);
