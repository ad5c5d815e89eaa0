//! TURN credentials in the coturn REST API scheme (`use-auth-secret`): the username is
//! `<expiry unix seconds>:<subject>` and the password is base64(HMAC-SHA1(secret, username)).
//! coturn recomputes the HMAC with its `static-auth-secret` and refuses expired usernames, so
//! credentials need no state and expire by themselves.

use base64::Engine as _;
use hmac::{Hmac, Mac as _};

/// A username and password for a TURN server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnCredential {
    /// `<expiry>:<subject>`.
    pub username: String,
    /// base64(HMAC-SHA1(secret, username)).
    pub password: String,
    /// Expiry, seconds since the epoch.
    pub expires_at: i64,
}

/// Credentials for `subject` (must not contain `:`) valid until `now_unix + ttl_seconds`.
pub fn credential(secret: &str, subject: &str, now_unix: i64, ttl_seconds: i64) -> TurnCredential {
    let expires_at = now_unix + ttl_seconds.max(1);
    let username = format!("{expires_at}:{subject}");
    TurnCredential {
        password: password(secret, &username),
        username,
        expires_at,
    }
}

/// The password coturn expects for `username`.
pub fn password(secret: &str, username: &str) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_known_coturn_credential() {
        // RFC 2202 test case 2 (HMAC-SHA1, key "Jefe"): effbc6d1... as base64.
        assert_eq!(
            password("Jefe", "what do ya want for nothing?"),
            "7/zfauXrL6LSdBbV8YTfnCWafHk="
        );
        let c = credential("s3cret", "appt.patient", 1_700_000_000, 600);
        assert_eq!(c.username, "1700000600:appt.patient");
        assert_eq!(c.expires_at, 1_700_000_600);
        assert_eq!(c.password, password("s3cret", "1700000600:appt.patient"));
    }
}
