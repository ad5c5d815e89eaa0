//! Every SQL statement of the signalling service, each a complete literal. The statements are
//! the same on PostgreSQL and SQLite. Functions take the connection (a read connection, or the
//! call's transaction by deref) and return domain types; stored codes are converted here.
//!
//! Participant states appear as literals in some statements (`state = 2` online, `3`
//! disconnected, `4` left): [`ParticipantState::code`] is their one definition.

use crate::domain::{EndReason, LeaveReason, ParticipantState, Side};
use sqlx::AnyConnection;
use sqlx::Row as _;

/// A stored code that names no variant of its enum (a row written by a newer version).
fn decode_error(column: &str) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: format!("unknown {column} code").into(),
    }
}

fn side(r: &sqlx::any::AnyRow, column: &str) -> Result<Side, sqlx::Error> {
    Side::from_code(r.try_get(column)?).ok_or_else(|| decode_error(column))
}

/// A session row.
#[derive(Clone)]
pub(crate) struct Session {
    pub session_id: String,
    pub appointment_id: String,
    /// The booked patient's identity number: the outbox route key, never logged.
    pub patient_nin: String,
    pub gp_id: String,
    pub org_number: String,
    pub municipality_number: String,
    pub window_end: i64,
    pub started_at: i64,
    pub admitted_at: Option<i64>,
    /// The side whose offer waits for an answer.
    pub pending_offer_side: Option<Side>,
    pub both_connected_since: Option<i64>,
    pub connected_at: Option<i64>,
    pub connected_ms: i64,
    pub ended_at: Option<i64>,
    pub end_reason: Option<EndReason>,
    pub held: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("session_id", &self.session_id)
            .field("appointment_id", &self.appointment_id)
            .field("ended_at", &self.ended_at)
            .finish_non_exhaustive()
    }
}

fn session(r: &sqlx::any::AnyRow) -> Result<Session, sqlx::Error> {
    Ok(Session {
        session_id: r.try_get("session_id")?,
        appointment_id: r.try_get("appointment_id")?,
        patient_nin: r.try_get("patient_nin")?,
        gp_id: r.try_get("gp_id")?,
        org_number: r.try_get("org_number")?,
        municipality_number: r.try_get("municipality_number")?,
        window_end: r.try_get("window_end")?,
        started_at: r.try_get("started_at")?,
        admitted_at: r.try_get("admitted_at")?,
        pending_offer_side: match r.try_get::<i64, _>("pending_offer_side")? {
            0 => None,
            code => Some(Side::from_code(code).ok_or_else(|| decode_error("pending_offer_side"))?),
        },
        both_connected_since: r.try_get("both_connected_since")?,
        connected_at: r.try_get("connected_at")?,
        connected_ms: r.try_get("connected_ms")?,
        ended_at: r.try_get("ended_at")?,
        end_reason: r
            .try_get::<Option<i64>, _>("end_reason")?
            .map(|c| EndReason::from_code(c).ok_or_else(|| decode_error("end_reason")))
            .transpose()?,
        held: r.try_get::<i64, _>("held")? != 0,
    })
}

/// A participant row.
#[derive(Debug, Clone)]
pub(crate) struct Participant {
    pub subject: String,
    pub state: ParticipantState,
    pub epoch: i64,
    pub described: bool,
    pub candidates: i64,
    pub end_of_candidates: bool,
    pub ice_restarts: i64,
    /// Patient side: who joined for the patient (relation code, 0 the patient; name or "").
    pub actor_relation: i64,
    pub actor_name: String,
}

fn participant_state(r: &sqlx::any::AnyRow) -> Result<ParticipantState, sqlx::Error> {
    ParticipantState::from_code(r.try_get("state")?).ok_or_else(|| decode_error("state"))
}

fn participant(r: &sqlx::any::AnyRow) -> Result<Participant, sqlx::Error> {
    Ok(Participant {
        subject: r.try_get("subject")?,
        state: participant_state(r)?,
        epoch: r.try_get("epoch")?,
        described: r.try_get::<i64, _>("described")? != 0,
        candidates: r.try_get("candidates")?,
        end_of_candidates: r.try_get::<i64, _>("end_of_candidates")? != 0,
        ice_restarts: r.try_get("ice_restarts")?,
        actor_relation: r.try_get("actor_relation")?,
        actor_name: r.try_get("actor_name")?,
    })
}

/// Whether the appointment's GP let the clinician `hpr_number` join.
pub(crate) async fn granted(
    conn: &mut AnyConnection,
    appointment_id: &str,
    hpr_number: &str,
) -> Result<bool, sqlx::Error> {
    let row = sqlx::query(
        "SELECT 1 AS one FROM signalling_grants WHERE appointment_id = $1 AND hpr_number = $2",
    )
    .bind(appointment_id)
    .bind(hpr_number)
    .fetch_optional(conn)
    .await?;
    Ok(row.is_some())
}

/// Lets the clinician `hpr_number` join as the practice side (again: no change).
pub(crate) async fn grant(
    conn: &mut AnyConnection,
    appointment_id: &str,
    hpr_number: &str,
    granted_by: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO signalling_grants (appointment_id, hpr_number, granted_by, granted_at) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (appointment_id, hpr_number) DO NOTHING",
    )
    .bind(appointment_id)
    .bind(hpr_number)
    .bind(granted_by)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// A session to create on the first join.
pub(crate) struct NewSession<'a> {
    pub session_id: &'a str,
    pub appointment_id: &'a str,
    pub patient_nin: &'a str,
    pub gp_id: &'a str,
    pub gp_hpr_number: &'a str,
    pub org_number: &'a str,
    pub municipality_number: &'a str,
    pub window_start: i64,
    pub window_end: i64,
    pub started_at: i64,
}

/// Creates the appointment's session unless it exists.
pub(crate) async fn create_session(
    conn: &mut AnyConnection,
    s: &NewSession<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO signalling_sessions (session_id, appointment_id, patient_nin, gp_id, gp_hpr_number, org_number, \
         municipality_number, window_start, window_end, started_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (appointment_id) DO NOTHING",
    )
    .bind(s.session_id)
    .bind(s.appointment_id)
    .bind(s.patient_nin)
    .bind(s.gp_id)
    .bind(s.gp_hpr_number)
    .bind(s.org_number)
    .bind(s.municipality_number)
    .bind(s.window_start)
    .bind(s.window_end)
    .bind(s.started_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// The session of an appointment.
pub(crate) async fn session_of(
    conn: &mut AnyConnection,
    appointment_id: &str,
) -> Result<Option<Session>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT session_id, appointment_id, patient_nin, gp_id, org_number, municipality_number, \
         window_start, window_end, started_at, admitted_at, pending_offer_side, both_connected_since, connected_at, \
         connected_ms, ended_at, end_reason, held FROM signalling_sessions WHERE appointment_id = $1",
    )
    .bind(appointment_id)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(session).transpose()
}

/// The participant on `side` of a session.
pub(crate) async fn participant_of(
    conn: &mut AnyConnection,
    session_id: &str,
    side: Side,
) -> Result<Option<Participant>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT subject, state, epoch, described, candidates, end_of_candidates, ice_restarts, \
         actor_relation, actor_name FROM signalling_participants WHERE session_id = $1 AND side = $2",
    )
    .bind(session_id)
    .bind(side.code())
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(participant).transpose()
}

/// The session of an appointment and its participant on `side`, in one statement (the relay's
/// hot path).
pub(crate) async fn session_and_participant(
    conn: &mut AnyConnection,
    appointment_id: &str,
    side: Side,
) -> Result<Option<(Session, Participant)>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT s.session_id, s.appointment_id, s.patient_nin, s.gp_id, s.org_number, s.municipality_number, \
         s.window_start, s.window_end, s.started_at, s.admitted_at, s.pending_offer_side, s.both_connected_since, \
         s.connected_at, s.connected_ms, s.ended_at, s.end_reason, s.held, \
         p.subject, p.state, p.epoch, p.described, p.candidates, p.end_of_candidates, p.ice_restarts, \
         p.actor_relation, p.actor_name \
         FROM signalling_sessions s \
         JOIN signalling_participants p ON p.session_id = s.session_id AND p.side = $2 \
         WHERE s.appointment_id = $1",
    )
    .bind(appointment_id)
    .bind(side.code())
    .fetch_optional(conn)
    .await?;
    row.as_ref()
        .map(|r| Ok((session(r)?, participant(r)?)))
        .transpose()
}

/// Appends an event (its stored form) to the queue of `side`; returns its sequence number.
/// The next seq and the row in one statement; the session lock the caller holds keeps
/// MAX(seq) + 1 unique (and the primary key would refuse a duplicate).
pub(crate) async fn enqueue(
    conn: &mut AnyConnection,
    session_id: &str,
    side: Side,
    body: &str,
    now: i64,
) -> Result<i64, sqlx::Error> {
    sqlx::query(
        "INSERT INTO signalling_messages (session_id, side, seq, body, created_at) \
         SELECT $1, $2, COALESCE(MAX(seq), 0) + 1, $3, $4 FROM signalling_messages \
         WHERE session_id = $1 AND side = $2 RETURNING seq",
    )
    .bind(session_id)
    .bind(side.code())
    .bind(body)
    .bind(now)
    .fetch_one(conn)
    .await
    .and_then(|r| r.try_get::<i64, _>("seq"))
}

/// The last sequence number in the queue of `side` (0: empty).
pub(crate) async fn head_seq(
    conn: &mut AnyConnection,
    session_id: &str,
    side: Side,
) -> Result<i64, sqlx::Error> {
    sqlx::query(
        "SELECT COALESCE(MAX(seq), 0) AS s FROM signalling_messages WHERE session_id = $1 AND side = $2",
    )
    .bind(session_id)
    .bind(side.code())
    .fetch_one(conn)
    .await
    .and_then(|r| r.try_get::<i64, _>("s"))
}

/// Joins (or rejoins) `side`: a participant who left becomes joined again. `actor`: on the
/// patient side, who joined for the patient (number, relation code, name; "", 0, "" for the
/// patient themselves), the latest join's.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn join_participant(
    conn: &mut AnyConnection,
    session_id: &str,
    side: Side,
    subject: &str,
    hpr_number: &str,
    (actor_nin, actor_relation, actor_name): (&str, i64, &str),
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO signalling_participants (session_id, side, subject, hpr_number, state, joined_at, last_join_at, \
         actor_nin, actor_relation, actor_name) \
         VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8, $9) ON CONFLICT (session_id, side) DO UPDATE SET \
         subject = excluded.subject, hpr_number = excluded.hpr_number, last_join_at = excluded.last_join_at, \
         actor_nin = excluded.actor_nin, actor_relation = excluded.actor_relation, actor_name = excluded.actor_name, \
         joins = signalling_participants.joins + 1, left_at = NULL, left_reason = NULL, \
         state = CASE WHEN signalling_participants.state = 4 THEN 1 ELSE signalling_participants.state END",
    )
    .bind(session_id)
    .bind(side.code())
    .bind(subject)
    .bind(hpr_number)
    .bind(ParticipantState::Joined.code())
    .bind(now)
    .bind(actor_nin)
    .bind(actor_relation)
    .bind(actor_name)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records the patient's admission.
pub(crate) async fn admit(
    conn: &mut AnyConnection,
    session_id: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE signalling_sessions SET admitted_at = $1 WHERE session_id = $2")
        .bind(now)
        .bind(session_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Ends an open session; `false` when it had ended already.
pub(crate) async fn end_session(
    conn: &mut AnyConnection,
    session_id: &str,
    reason: EndReason,
    held: bool,
    connected_ms: i64,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE signalling_sessions SET ended_at = $1, end_reason = $2, held = $3, connected_ms = $4, \
         both_connected_since = NULL, pending_offer_side = 0 WHERE session_id = $5 AND ended_at IS NULL",
    )
    .bind(now)
    .bind(reason.code())
    .bind(i64::from(held))
    .bind(connected_ms)
    .bind(session_id)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(updated > 0)
}

/// Every participant of an ended session leaves (online time closed).
pub(crate) async fn close_participants(
    conn: &mut AnyConnection,
    session_id: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE signalling_participants SET online_ms = online_ms + CASE WHEN state = 2 AND stream_started_at IS NOT NULL \
         THEN $1 - stream_started_at ELSE 0 END, state = 4, left_at = COALESCE(left_at, $1), media_connected = 0 \
         WHERE session_id = $2 AND state <> 4",
    )
    .bind(now)
    .bind(session_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// The sides with a live stream.
pub(crate) async fn online_sides(
    conn: &mut AnyConnection,
    session_id: &str,
) -> Result<Vec<Side>, sqlx::Error> {
    let rows =
        sqlx::query("SELECT side FROM signalling_participants WHERE session_id = $1 AND state = 2")
            .bind(session_id)
            .fetch_all(conn)
            .await?;
    Ok(rows
        .iter()
        .filter_map(|r| r.try_get::<i64, _>("side").ok())
        .filter_map(Side::from_code)
        .collect())
}

/// A new stream of `side` takes over: online with `epoch`, on this instance.
pub(crate) async fn open_stream(
    conn: &mut AnyConnection,
    session_id: &str,
    side: Side,
    epoch: i64,
    instance_id: &str,
    rejoin: bool,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE signalling_participants SET state = 2, epoch = $1, instance_id = $2, \
         online_ms = online_ms + CASE WHEN state = 2 AND stream_started_at IS NOT NULL THEN $3 - stream_started_at ELSE 0 END, \
         stream_started_at = $3, disconnected_at = NULL, rejoins = rejoins + $4 \
         WHERE session_id = $5 AND side = $6",
    )
    .bind(epoch)
    .bind(instance_id)
    .bind(now)
    .bind(i64::from(rejoin))
    .bind(session_id)
    .bind(side.code())
    .execute(conn)
    .await?;
    Ok(())
}

/// A queued event: its sequence number and stored form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Queued {
    pub seq: i64,
    pub body: String,
}

/// The most queued events read at once ([`pending`]).
pub(crate) const QUEUE_PAGE: usize = 200;

/// What a stream of `side` has to do: the participant's stream epoch and state, and the first
/// [`QUEUE_PAGE`] queued events after `cursor`. One statement (one round trip, one snapshot):
/// every delivery and every poll of every stream reads this. `None`: no such participant.
pub(crate) async fn pending(
    conn: &mut AnyConnection,
    session_id: &str,
    side: Side,
    cursor: i64,
) -> Result<Option<(i64, ParticipantState, Vec<Queued>)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT p.epoch, p.state, m.seq, m.body FROM signalling_participants p \
         LEFT JOIN signalling_messages m ON m.session_id = p.session_id AND m.side = p.side AND m.seq > $3 \
         WHERE p.session_id = $1 AND p.side = $2 ORDER BY m.seq LIMIT 200",
    )
    .bind(session_id)
    .bind(side.code())
    .bind(cursor)
    .fetch_all(conn)
    .await?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let epoch = first.try_get("epoch")?;
    let state = participant_state(first)?;
    let mut events = Vec::with_capacity(rows.len());
    for r in &rows {
        if let Some(seq) = r.try_get::<Option<i64>, _>("seq")? {
            events.push(Queued {
                seq,
                body: r.try_get("body")?,
            });
        }
    }
    Ok(Some((epoch, state, events)))
}

/// The live stream `epoch` of `side` ended: the participant is `state` (disconnected or left,
/// with `reason`). `false` when that stream was no longer the live one.
pub(crate) async fn close_stream(
    conn: &mut AnyConnection,
    session_id: &str,
    side: Side,
    epoch: i64,
    state: ParticipantState,
    reason: LeaveReason,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE signalling_participants SET state = $1, \
         disconnected_at = CASE WHEN $1 = 3 THEN $2 ELSE disconnected_at END, \
         left_at = CASE WHEN $1 = 4 THEN $2 ELSE left_at END, \
         left_reason = CASE WHEN $1 = 4 THEN $3 ELSE left_reason END, \
         online_ms = online_ms + CASE WHEN stream_started_at IS NOT NULL THEN $2 - stream_started_at ELSE 0 END, \
         stream_started_at = NULL WHERE session_id = $4 AND side = $5 AND epoch = $6 AND state = 2",
    )
    .bind(state.code())
    .bind(now)
    .bind(reason.code())
    .bind(session_id)
    .bind(side.code())
    .bind(epoch)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(updated > 0)
}

/// When the session ended, if it did.
pub(crate) async fn ended_at(
    conn: &mut AnyConnection,
    session_id: &str,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query("SELECT ended_at FROM signalling_sessions WHERE session_id = $1")
        .bind(session_id)
        .fetch_one(conn)
        .await
        .and_then(|r| r.try_get::<Option<i64>, _>("ended_at"))
}

/// Records `side`'s media connection state.
pub(crate) async fn set_media_connected(
    conn: &mut AnyConnection,
    session_id: &str,
    side: Side,
    connected: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE signalling_participants SET media_connected = $1 WHERE session_id = $2 AND side = $3",
    )
    .bind(i64::from(connected))
    .bind(session_id)
    .bind(side.code())
    .execute(conn)
    .await?;
    Ok(())
}

/// How many sides report a media connection.
pub(crate) async fn media_connected_count(
    conn: &mut AnyConnection,
    session_id: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query(
        "SELECT COUNT(*) AS n FROM signalling_participants WHERE session_id = $1 AND media_connected = 1",
    )
    .bind(session_id)
    .fetch_one(conn)
    .await
    .and_then(|r| r.try_get::<i64, _>("n"))
}

/// Both sides are connected: opens the connected interval (and records the first connection).
pub(crate) async fn open_connected_interval(
    conn: &mut AnyConnection,
    session_id: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE signalling_sessions SET both_connected_since = COALESCE(both_connected_since, $1), \
         connected_at = COALESCE(connected_at, $1) WHERE session_id = $2 AND ended_at IS NULL",
    )
    .bind(now)
    .bind(session_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// A side is no longer connected (since `now`): closes the connected interval into
/// `connected_ms` (nothing when it opened later).
pub(crate) async fn close_connected_interval(
    conn: &mut AnyConnection,
    session_id: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE signalling_sessions SET connected_ms = connected_ms + CASE WHEN both_connected_since IS NULL \
         OR both_connected_since > $1 THEN 0 ELSE $1 - both_connected_since END, both_connected_since = NULL \
         WHERE session_id = $2",
    )
    .bind(now)
    .bind(session_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// `side`'s offer waits for the peer's answer.
pub(crate) async fn set_pending_offer(
    conn: &mut AnyConnection,
    session_id: &str,
    side: Side,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE signalling_sessions SET pending_offer_side = $1 WHERE session_id = $2")
        .bind(side.code())
        .bind(session_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// The pending offer was answered.
pub(crate) async fn clear_pending_offer(
    conn: &mut AnyConnection,
    session_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE signalling_sessions SET pending_offer_side = 0 WHERE session_id = $1")
        .bind(session_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// A new ICE generation: both sides trickle afresh; an ICE restart by `side` is counted.
pub(crate) async fn new_ice_generation(
    conn: &mut AnyConnection,
    session_id: &str,
    side: Side,
    ice_restart: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE signalling_participants SET candidates = 0, end_of_candidates = 0, \
         ice_restarts = ice_restarts + CASE WHEN side = $1 AND $2 = 1 THEN 1 ELSE 0 END \
         WHERE session_id = $3",
    )
    .bind(side.code())
    .bind(i64::from(ice_restart))
    .bind(session_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// `side` sent an offer or answer.
pub(crate) async fn mark_described(
    conn: &mut AnyConnection,
    session_id: &str,
    side: Side,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE signalling_participants SET described = 1 WHERE session_id = $1 AND side = $2",
    )
    .bind(session_id)
    .bind(side.code())
    .execute(conn)
    .await?;
    Ok(())
}

/// `side` trickled one more candidate.
pub(crate) async fn count_candidate(
    conn: &mut AnyConnection,
    session_id: &str,
    side: Side,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE signalling_participants SET candidates = candidates + 1 WHERE session_id = $1 AND side = $2",
    )
    .bind(session_id)
    .bind(side.code())
    .execute(conn)
    .await?;
    Ok(())
}

/// `side` trickled all its candidates of this generation.
pub(crate) async fn set_end_of_candidates(
    conn: &mut AnyConnection,
    session_id: &str,
    side: Side,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE signalling_participants SET end_of_candidates = 1 WHERE session_id = $1 AND side = $2",
    )
    .bind(session_id)
    .bind(side.code())
    .execute(conn)
    .await?;
    Ok(())
}

/// Appointments of open sessions whose join window closed before `now` (at most 100).
pub(crate) async fn expired_sessions(
    conn: &mut AnyConnection,
    now: i64,
) -> Result<Vec<String>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT appointment_id FROM signalling_sessions WHERE ended_at IS NULL AND window_end < $1 LIMIT 100",
    )
    .bind(now)
    .fetch_all(conn)
    .await?;
    rows.iter().map(|r| r.try_get("appointment_id")).collect()
}

/// A participant of an open session, as the sweeper finds it.
#[derive(Debug, Clone)]
pub(crate) struct SweptParticipant {
    pub session_id: String,
    pub appointment_id: String,
    pub side: Side,
    /// The stream epoch (only read for online participants).
    pub epoch: i64,
}

/// Disconnected participants of open sessions whose grace period started before
/// `grace_start` (at most 100).
pub(crate) async fn gone_participants(
    conn: &mut AnyConnection,
    grace_start: i64,
) -> Result<Vec<SweptParticipant>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT p.session_id, s.appointment_id, p.side FROM signalling_participants p \
         JOIN signalling_sessions s ON s.session_id = p.session_id \
         WHERE p.state = 3 AND p.disconnected_at < $1 AND s.ended_at IS NULL LIMIT 100",
    )
    .bind(grace_start)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(SweptParticipant {
                session_id: r.try_get("session_id")?,
                appointment_id: r.try_get("appointment_id")?,
                side: side(r, "side")?,
                epoch: 0,
            })
        })
        .collect()
}

/// A disconnected participant did not come back in time: it is gone. Returns when its stream
/// dropped, or `None` when it came back (or was let go) meanwhile.
pub(crate) async fn mark_gone(
    conn: &mut AnyConnection,
    session_id: &str,
    side: Side,
    grace_start: i64,
    now: i64,
) -> Result<Option<i64>, sqlx::Error> {
    let row = sqlx::query(
        "UPDATE signalling_participants SET state = 4, left_at = $1, left_reason = $2 \
         WHERE session_id = $3 AND side = $4 AND state = 3 AND disconnected_at < $5 \
         RETURNING disconnected_at",
    )
    .bind(now)
    .bind(LeaveReason::Gone.code())
    .bind(session_id)
    .bind(side.code())
    .bind(grace_start)
    .fetch_optional(conn)
    .await?;
    row.map(|r| r.try_get::<i64, _>("disconnected_at"))
        .transpose()
}

/// Online participants of open sessions (at most 1 000).
pub(crate) async fn online_participants(
    conn: &mut AnyConnection,
) -> Result<Vec<SweptParticipant>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT p.session_id, s.appointment_id, p.side, p.epoch FROM signalling_participants p \
         JOIN signalling_sessions s ON s.session_id = p.session_id \
         WHERE p.state = 2 AND s.ended_at IS NULL LIMIT 1000",
    )
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(SweptParticipant {
                session_id: r.try_get("session_id")?,
                appointment_id: r.try_get("appointment_id")?,
                side: side(r, "side")?,
                epoch: r.try_get("epoch")?,
            })
        })
        .collect()
}

/// Deletes the queued events of sessions that ended before `before`.
pub(crate) async fn prune_queues(conn: &mut AnyConnection, before: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "DELETE FROM signalling_messages WHERE session_id IN \
         (SELECT session_id FROM signalling_sessions WHERE ended_at < $1)",
    )
    .bind(before)
    .execute(conn)
    .await?;
    Ok(())
}
