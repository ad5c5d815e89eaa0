//! Per-caller rate limits (token buckets keyed by token subject), applied by the
//! [`crate::auth::AuthInterceptor`] right after authentication. A refused call gets
//! `RESOURCE_EXHAUSTED` with a `retry-after-ms` metadata entry and the wait in the message.

use crate::auth::Role;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tonic::Status;

/// Sustained rate and burst of one kind of caller; a rate of 0 means unlimited.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    /// Requests per second, sustained.
    pub per_second: f64,
    /// Requests allowed at once after being idle.
    pub burst: f64,
}

impl Limit {
    /// No limit.
    pub const UNLIMITED: Limit = Limit {
        per_second: 0.0,
        burst: 0.0,
    };
}

/// Limits per role.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimits {
    /// Each patient (by token subject).
    pub patient: Limit,
    /// Each clinician.
    pub clinician: Limit,
    /// Each EHR system (client).
    pub ehr: Limit,
    /// Each operations user.
    pub ops: Limit,
}

impl Default for RateLimits {
    /// A person in an app does not need more than a few calls a second; an EHR system serves a
    /// whole practice (bursts when it publishes a schedule).
    fn default() -> Self {
        Self {
            patient: Limit {
                per_second: 10.0,
                burst: 40.0,
            },
            clinician: Limit {
                per_second: 20.0,
                burst: 80.0,
            },
            ehr: Limit {
                per_second: 2000.0,
                burst: 4000.0,
            },
            ops: Limit {
                per_second: 50.0,
                burst: 200.0,
            },
        }
    }
}

impl RateLimits {
    /// No limits at all.
    pub fn unlimited() -> Self {
        Self {
            patient: Limit::UNLIMITED,
            clinician: Limit::UNLIMITED,
            ehr: Limit::UNLIMITED,
            ops: Limit::UNLIMITED,
        }
    }

    fn of(&self, role: Role) -> Limit {
        match role {
            Role::Patient => self.patient,
            Role::Clinician => self.clinician,
            Role::Ehr => self.ehr,
            Role::Ops => self.ops,
        }
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets of all callers seen recently.
pub struct RateLimiter {
    limits: RateLimits,
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// Buckets kept before idle ones are dropped.
const MAX_BUCKETS: usize = 100_000;

impl RateLimiter {
    /// A limiter with `limits`.
    pub fn new(limits: RateLimits) -> Self {
        Self {
            limits,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `subject` of `role`, or says how long to wait.
    pub fn check(&self, role: Role, subject: &str) -> Result<(), Status> {
        self.check_at(role, subject, Instant::now())
    }

    fn check_at(&self, role: Role, subject: &str, now: Instant) -> Result<(), Status> {
        let limit = self.limits.of(role);
        if limit.per_second <= 0.0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(subject) {
            // A full bucket is the same as none: forget callers idle long enough to be full.
            let full_after = Duration::from_secs_f64(limit.burst / limit.per_second);
            buckets.retain(|_, b| now.duration_since(b.at) < full_after);
        }
        let b = buckets.entry(subject.to_owned()).or_insert(Bucket {
            tokens: limit.burst,
            at: now,
        });
        let elapsed = now.duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * limit.per_second).min(limit.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        let wait_ms = (((1.0 - b.tokens) / limit.per_second) * 1000.0)
            .ceil()
            .max(1.0) as u64;
        let mut status = Status::resource_exhausted(format!(
            "rate limit of {} requests per second for this caller exceeded; retry after {wait_ms} ms",
            limit.per_second
        ));
        if let Ok(v) = wait_ms.to_string().parse() {
            status.metadata_mut().insert("retry-after-ms", v);
        }
        Err(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let l = RateLimiter::new(RateLimits {
            patient: Limit {
                per_second: 2.0,
                burst: 3.0,
            },
            ..RateLimits::unlimited()
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check_at(Role::Patient, "a", t0).is_ok());
        }
        let e = l.check_at(Role::Patient, "a", t0).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            e.metadata()
                .get("retry-after-ms")
                .and_then(|v| v.to_str().ok()),
            Some("500")
        );
        // Another caller has its own bucket; other roles are unlimited here.
        assert!(l.check_at(Role::Patient, "b", t0).is_ok());
        assert!(l.check_at(Role::Ehr, "a", t0).is_ok());
        // Half a second later one more token has come.
        let t1 = t0 + Duration::from_millis(500);
        assert!(l.check_at(Role::Patient, "a", t1).is_ok());
        assert!(l.check_at(Role::Patient, "a", t1).is_err());
    }
}
