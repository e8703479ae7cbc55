//! Encryption at rest of what an outbox row carries beyond ids — the changeset of a deferred
//! observer row and the value of a composed message — so personal data in them is not
//! readable from the table or its backups (dionysus-rb's encrypted changesets, P-12).
//!
//! Authenticated encryption with XChaCha20-Poly1305: a random 24-byte nonce per value (safe to
//! draw at random at any volume), stored as standard base64 of `nonce ‖ ciphertext ‖ tag`,
//! next to the id of the key that sealed it. The key id is bound as associated data, so a
//! value cannot be opened as if it had been sealed by another key. Rows whose key is missing,
//! or whose bytes were altered, do not open: the caller reports that as an error and never
//! publishes what it could not open.
//!
//! This module owns the sealing format only; which keys exist is configuration
//! (`ProducerConfig::outbox_encryption_keys`), and which columns are sealed is the outbox
//! writer's and the relay's business.

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::config::{EncryptionKey, EncryptionKeys};

/// Nonce length of XChaCha20-Poly1305.
const NONCE_BYTES: usize = 24;

/// A sealed value could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The row was sealed with a key that is not configured (rotated out too early, or the
    /// relay runs without `DIONYSUS_OUTBOX_ENCRYPTION_KEYS`).
    #[error(
        "the outbox row was sealed with key `{key_id}`, which is not configured (configured: {configured}); \
         set DIONYSUS_OUTBOX_ENCRYPTION_KEYS to include it"
    )]
    UnknownKey {
        /// The row's key id.
        key_id: String,
        /// The configured key ids.
        configured: String,
    },
    /// The value does not open with its key: the key under that id is not the one that
    /// sealed it, or the stored bytes were altered.
    #[error("the outbox row sealed with key `{key_id}` does not open: wrong key for that id, or altered data")]
    Rejected {
        /// The row's key id.
        key_id: String,
    },
    /// Sealing failed (not expected with a 32-byte key).
    #[error("sealing an outbox value with key `{key_id}` failed")]
    Seal {
        /// The key id.
        key_id: String,
    },
}

/// Seals `plaintext` with `key`: base64 of `nonce ‖ ciphertext ‖ tag`.
pub(crate) fn seal(key: &EncryptionKey, plaintext: &[u8]) -> Result<String, SealError> {
    let cipher = XChaCha20Poly1305::new(&key.secret.into());
    let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
    let sealed = cipher
        .encrypt(&nonce, Payload { msg: plaintext, aad: key.id.as_bytes() })
        .map_err(|_| SealError::Seal { key_id: key.id.clone() })?;
    let mut bytes = Vec::with_capacity(NONCE_BYTES + sealed.len());
    bytes.extend_from_slice(&nonce);
    bytes.extend_from_slice(&sealed);
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// Opens a value sealed by [`seal`] with the key named `key_id`.
pub(crate) fn open(keys: &EncryptionKeys, key_id: &str, sealed: &str) -> Result<Vec<u8>, SealError> {
    let Some(key) = keys.get(key_id) else {
        let configured = keys.0.iter().map(|key| key.id.as_str()).collect::<Vec<_>>().join(", ");
        return Err(SealError::UnknownKey {
            key_id: key_id.to_owned(),
            configured: if configured.is_empty() { "none".to_owned() } else { configured },
        });
    };
    let rejected = || SealError::Rejected { key_id: key_id.to_owned() };
    let bytes = base64::engine::general_purpose::STANDARD.decode(sealed.trim()).map_err(|_| rejected())?;
    if bytes.len() < NONCE_BYTES {
        return Err(rejected());
    }
    let (nonce, ciphertext) = bytes.split_at(NONCE_BYTES);
    XChaCha20Poly1305::new(&key.secret.into())
        .decrypt(XNonce::from_slice(nonce), Payload { msg: ciphertext, aad: key_id.as_bytes() })
        .map_err(|_| rejected())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, byte: u8) -> EncryptionKey {
        EncryptionKey { id: id.to_owned(), secret: [byte; 32] }
    }

    #[test]
    fn sealed_values_open_with_their_key_only() {
        let keys = EncryptionKeys(vec![key("new", 1), key("old", 2)]);
        let sealed = seal(&keys.0[1], br#"{"email":["a@b.c",null]}"#).unwrap();
        assert!(!sealed.contains("a@b.c"));
        assert_eq!(open(&keys, "old", &sealed).unwrap(), br#"{"email":["a@b.c",null]}"#);
        assert_eq!(open(&keys, "new", &sealed), Err(SealError::Rejected { key_id: "new".into() }));
        let error = open(&EncryptionKeys(vec![key("new", 1)]), "old", &sealed).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the outbox row was sealed with key `old`, which is not configured (configured: new); set \
             DIONYSUS_OUTBOX_ENCRYPTION_KEYS to include it"
        );
        let same_id_other_secret = EncryptionKeys(vec![key("old", 3)]);
        assert_eq!(open(&same_id_other_secret, "old", &sealed), Err(SealError::Rejected { key_id: "old".into() }));
        assert_eq!(open(&keys, "old", "not base64!"), Err(SealError::Rejected { key_id: "old".into() }));
    }

    #[test]
    fn each_seal_draws_a_new_nonce() {
        let key = key("k", 7);
        assert_ne!(seal(&key, b"same").unwrap(), seal(&key, b"same").unwrap());
    }
}
