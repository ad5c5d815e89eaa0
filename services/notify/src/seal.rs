//! Contact details sealed at rest: ChaCha20-Poly1305 with the service's key, a fresh random
//! nonce per value, and the patient's identity number as associated data (a sealed value moved
//! to another patient's row does not open). Stored as base64 of nonce || ciphertext.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore as _;

/// The key; `Debug` prints nothing of it.
#[derive(Clone)]
pub struct Sealer(ChaCha20Poly1305);

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// A sealer with a 32-byte key.
    pub fn new(key: &[u8; 32]) -> Self {
        Self(ChaCha20Poly1305::new(&Key::from(*key)))
    }

    /// A sealer from the base64 of a 32-byte key (`--notify-contact-key`).
    pub fn from_base64(key: &str) -> anyhow::Result<Self> {
        let bytes = STANDARD.decode(key.trim())?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| anyhow::anyhow!("the contact key must be 32 bytes (base64)"))?;
        Ok(Self::new(&key))
    }

    /// Seals `plain` for the patient `nin`.
    pub fn seal(&self, nin: &str, plain: &str) -> anyhow::Result<String> {
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = self
            .0
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plain.as_bytes(),
                    aad: nin.as_bytes(),
                },
            )
            .map_err(|_| anyhow::anyhow!("sealing a contact detail failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(STANDARD.encode(out))
    }

    /// Opens a sealed value of the patient `nin`.
    pub fn open(&self, nin: &str, sealed: &str) -> anyhow::Result<String> {
        let raw = STANDARD.decode(sealed)?;
        anyhow::ensure!(raw.len() > 12, "a sealed contact detail is too short");
        let (nonce, ct) = raw.split_at(12);
        let nonce: [u8; 12] = nonce.try_into()?;
        let plain = self
            .0
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ct,
                    aad: nin.as_bytes(),
                },
            )
            .map_err(|_| anyhow::anyhow!("a contact detail does not open with this key"))?;
        Ok(String::from_utf8(plain)?)
    }
}

/// The contact key of a server without `--notify-contact-key`: a random key kept in the data
/// directory (`notify-contact.key`, mode 0600), made on first start.
pub fn dev_key(data_dir: &std::path::Path) -> anyhow::Result<Sealer> {
    let path = data_dir.join("notify-contact.key");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        return Sealer::from_base64(&existing);
    }
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    let encoded = STANDARD.encode(key);
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(encoded.as_bytes())?;
    }
    Ok(Sealer::new(&key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_detail_opens_only_for_its_patient_and_key() {
        let s = Sealer::new(&[7; 32]);
        let sealed = s.seal("01010112345", "+4791234567").expect("seal");
        assert!(!sealed.contains("9123"));
        assert_eq!(s.open("01010112345", &sealed).expect("open"), "+4791234567");
        assert!(s.open("02020212345", &sealed).is_err());
        assert!(Sealer::new(&[8; 32]).open("01010112345", &sealed).is_err());
        assert_ne!(sealed, s.seal("01010112345", "+4791234567").expect("seal"));
    }
}
