//! Pseudonymous keys of patients for events: a keyed HMAC-SHA256 of the identity number,
//! base64url without padding (43 characters).
//!
//! Events (the outbox, and the Redis stream the relay copies it to) carry no identity number:
//! the outbox `route_key` that routes a patient's own change streams is [`Pseudonymizer::key_for`]
//! of the patient, and payloads carry ids (appointment, thread, waitlist entry) that consumers
//! resolve in the owning service's tables. The key comes from `--event-key-file`; without it a
//! random key is made on first start and kept in the data directory (`event.key`, mode 0600),
//! as the development keys are. Replicas must share the key. Rotation: a new key changes every
//! route key; consumers compute the caller's key per call, so a rotation only needs the relay
//! drained first (events written under the old key no longer reach the patients' streams).

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac as _};
use rand::RngCore as _;
use sha2::Sha256;
use std::path::Path;

/// File name of the key made in the data directory when none is configured.
pub const DEFAULT_KEY_FILE: &str = "event.key";

/// Least key length (bytes, after base64 decoding).
pub const MIN_KEY_BYTES: usize = 32;

/// Computes patients' pseudonymous event keys. Constructed once per process (carried in
/// [`crate::platform::Platform`]); `Debug` never shows the key.
#[derive(Clone)]
pub struct Pseudonymizer {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Pseudonymizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pseudonymizer(..)")
    }
}

impl Pseudonymizer {
    /// A pseudonymizer with `key` (at least [`MIN_KEY_BYTES`]).
    pub fn new(key: &[u8]) -> anyhow::Result<Self> {
        anyhow::ensure!(
            key.len() >= MIN_KEY_BYTES,
            "the event key must have at least {MIN_KEY_BYTES} bytes, it has {}",
            key.len()
        );
        let mac = Hmac::<Sha256>::new_from_slice(key).context("event key")?;
        Ok(Self { mac })
    }

    /// The key in `path`: base64 (standard alphabet) of at least [`MIN_KEY_BYTES`] bytes.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read the event key {}", path.display()))?;
        Self::from_text(&text, path)
    }

    /// The key `text` read from `path` (for errors): as [`Pseudonymizer::from_file`].
    fn from_text(text: &str, path: &Path) -> anyhow::Result<Self> {
        let key = STANDARD
            .decode(text.trim())
            .with_context(|| format!("the event key {} is not base64", path.display()))?;
        Self::new(&key).with_context(|| format!("the event key {}", path.display()))
    }

    /// The key kept in `data_dir` ([`DEFAULT_KEY_FILE`]), made (32 random bytes, mode 0600) on
    /// first start. Replicas started together on one directory read the same key.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Self> {
        let path = data_dir.join(DEFAULT_KEY_FILE);
        let text = crate::private_file::made_once(&path, || {
            let mut key = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut key);
            STANDARD.encode(key)
        })
        .with_context(|| format!("create or read the event key {}", path.display()))?;
        Self::from_text(&text, &path)
    }

    /// The pseudonymous key of the patient with identity number `nin` (the outbox `route_key`
    /// of events about them): base64url of HMAC-SHA256(key, nin), without padding.
    pub fn key_for(&self, nin: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(nin.as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_stable_per_patient_and_key_and_holds_no_digits_of_the_number() {
        let a = Pseudonymizer::new(&[1; 32]).expect("key");
        let b = Pseudonymizer::new(&[2; 32]).expect("key");
        let nin = "01010112345";
        assert_eq!(a.key_for(nin), a.key_for(nin));
        assert_eq!(a.key_for(nin).len(), 43);
        assert_ne!(a.key_for(nin), a.key_for("01010112346"));
        assert_ne!(a.key_for(nin), b.key_for(nin));
        assert!(!a.key_for(nin).contains(nin));
        assert!(Pseudonymizer::new(&[1; 16]).is_err());
    }

    #[test]
    fn the_default_key_is_made_once_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let first = Pseudonymizer::load_or_create(dir.path()).expect("create");
        let path = dir.path().join(DEFAULT_KEY_FILE);
        let mode = std::fs::metadata(&path)
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = Pseudonymizer::load_or_create(dir.path()).expect("read");
        assert_eq!(first.key_for("01010112345"), again.key_for("01010112345"));
        let configured = Pseudonymizer::from_file(&path).expect("from file");
        assert_eq!(first.key_for("x"), configured.key_for("x"));
    }

    /// Replicas started together on one fresh data directory (as the scale-out tests start
    /// two): every one reads the one key, none an empty or half-written file.
    #[test]
    fn replicas_starting_together_all_read_the_one_key() {
        crate::private_file::all_starting_together_agree(100, |dir| {
            Pseudonymizer::load_or_create(dir).map(|p| p.key_for("01010112345"))
        });
    }
}
