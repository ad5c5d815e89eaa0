-- Signalling service tables (owned by services/signalling). See the SQLite twin for comments.

CREATE TABLE signalling_sessions (
    session_id TEXT PRIMARY KEY,
    appointment_id TEXT NOT NULL UNIQUE,
    patient_nin TEXT NOT NULL,
    gp_id TEXT NOT NULL,
    gp_hpr_number TEXT NOT NULL,
    org_number TEXT NOT NULL,
    municipality_number TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    window_end BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    admitted_at BIGINT,
    pending_offer_side BIGINT NOT NULL DEFAULT 0,
    both_connected_since BIGINT,
    connected_at BIGINT,
    connected_ms BIGINT NOT NULL DEFAULT 0,
    ended_at BIGINT,
    end_reason BIGINT,
    held BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX signalling_sessions_open ON signalling_sessions (window_end) WHERE ended_at IS NULL;

CREATE TABLE signalling_participants (
    session_id TEXT NOT NULL REFERENCES signalling_sessions (session_id),
    side BIGINT NOT NULL,
    subject TEXT NOT NULL,
    hpr_number TEXT NOT NULL,
    state BIGINT NOT NULL,
    epoch BIGINT NOT NULL DEFAULT 0,
    instance_id TEXT NOT NULL DEFAULT '',
    joined_at BIGINT NOT NULL,
    last_join_at BIGINT NOT NULL,
    joins BIGINT NOT NULL DEFAULT 1,
    rejoins BIGINT NOT NULL DEFAULT 0,
    stream_started_at BIGINT,
    online_ms BIGINT NOT NULL DEFAULT 0,
    disconnected_at BIGINT,
    left_at BIGINT,
    left_reason BIGINT,
    media_connected BIGINT NOT NULL DEFAULT 0,
    described BIGINT NOT NULL DEFAULT 0,
    candidates BIGINT NOT NULL DEFAULT 0,
    end_of_candidates BIGINT NOT NULL DEFAULT 0,
    ice_restarts BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (session_id, side)
);
CREATE INDEX signalling_participants_state ON signalling_participants (state);

CREATE TABLE signalling_messages (
    session_id TEXT NOT NULL REFERENCES signalling_sessions (session_id),
    side BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (session_id, side, seq)
);

CREATE TABLE signalling_grants (
    appointment_id TEXT NOT NULL,
    hpr_number TEXT NOT NULL,
    granted_by TEXT NOT NULL,
    granted_at BIGINT NOT NULL,
    PRIMARY KEY (appointment_id, hpr_number)
);
