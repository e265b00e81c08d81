//! How a session key is shown outside the session table (incidents, reports, `/v1/*`, logs).
//!
//! The values of header, cookie and query identifiers are bearer credentials: whoever presents
//! them is the session. They are shown as a keyed hash, `cookie:SESSIONID=#3f2a9c1b7e4d05aa`,
//! under a key nobody outside can know, so nobody can test guesses against a label. The key is
//! drawn at random when the process starts, so a session keeps its label for the life of the
//! process; with `peers` (sessions spread over replicas, docs/scale-out.md) it is derived from
//! the replicas' shared secret instead, so every replica gives a session the same label and the
//! operator merges their incidents of it into one. JWT claims (`jwt:sub=4411`)
//! name a user without being a credential, and client addresses (`ip:10.0.0.7`) are shown in the
//! incident anyway: both are shown as they are. `admin.revealSessionKeys: true` shows every key
//! verbatim (see `docs/operations.md`, "Data kept").

use std::borrow::Cow;
use std::collections::hash_map::RandomState;
use std::fmt::Write as _;
use std::hash::{BuildHasher as _, Hasher};
use std::sync::{LazyLock, OnceLock};

use sha2::{Digest as _, Sha256};
use siphasher::sip::SipHasher13;

/// The key shared by the replicas, when set (before the first label is made).
static SHARED_KEY: OnceLock<(u64, u64)> = OnceLock::new();
/// The process's own random key otherwise.
static PROCESS_KEY: LazyLock<(u64, u64)> = LazyLock::new(|| {
    let random = RandomState::new();
    (random.hash_one(0u8), random.hash_one(1u8))
});

/// Derives the label key from the replicas' shared secret (`peers.secret`). Called once at
/// start, before any label is made; a later call changes nothing.
pub fn share_pseudonym_key(secret: &[u8]) {
    let _ = SHARED_KEY.set(derived_key(secret));
}

/// The label key of the replicas sharing `secret` (the same bytes in every replica and every
/// release; distinct from the other keys derived from it, such as the ring's).
fn derived_key(secret: &[u8]) -> (u64, u64) {
    let digest = Sha256::new()
        .chain_update(b"ordo session label key\0")
        .chain_update(secret)
        .finalize();
    let word = |at: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&digest[at..at + 8]);
        u64::from_le_bytes(bytes)
    };
    (word(0), word(8))
}

fn pseudonym_hasher() -> SipHasher13 {
    let (k0, k1) = SHARED_KEY.get().copied().unwrap_or(*PROCESS_KEY);
    SipHasher13::new_with_keys(k0, k1)
}

/// Identifier kinds whose values are credentials.
const CREDENTIAL_KINDS: [&str; 3] = ["header:", "cookie:", "query:"];

/// The session key as shown: credential values replaced by their keyed hash unless `reveal`.
pub fn session_label(key: &str, reveal: bool) -> Cow<'_, str> {
    if reveal || !CREDENTIAL_KINDS.iter().any(|kind| key.starts_with(kind)) {
        return Cow::Borrowed(key);
    }
    let Some((name, value)) = key.split_once('=') else {
        return Cow::Borrowed(key);
    };
    let mut hasher = pseudonym_hasher();
    hasher.write(value.as_bytes());
    let mut label = String::with_capacity(name.len() + 18);
    label.push_str(name);
    let _ = write!(label, "=#{:016x}", hasher.finish());
    Cow::Owned(label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_hashed_identities_are_not() {
        let cookie = session_label("cookie:SESSIONID=s3cr3t", false);
        assert!(cookie.starts_with("cookie:SESSIONID=#"), "{cookie}");
        assert!(!cookie.contains("s3cr3t"));
        assert_eq!(cookie.len(), "cookie:SESSIONID=#".len() + 16);
        assert_eq!(cookie, session_label("cookie:SESSIONID=s3cr3t", false));
        assert_ne!(cookie, session_label("cookie:SESSIONID=other", false));
        assert!(!session_label("header:x-api-key=k", false).contains("=k"));
        assert!(!session_label("query:sid=q1", false).contains("q1"));
        assert_eq!(session_label("jwt:sub=4411", false), "jwt:sub=4411");
        assert_eq!(session_label("ip:10.0.0.7", false), "ip:10.0.0.7");
        // A value that looks like a hash is the client's choice all the same: hashed too.
        let hashed_looking = session_label("cookie:SESSIONID=#s3cr3t", false);
        assert!(!hashed_looking.contains("s3cr3t"), "{hashed_looking}");
        assert_eq!(hashed_looking.len(), "cookie:SESSIONID=#".len() + 16);
        assert_eq!(
            session_label("cookie:SESSIONID=s3cr3t", true),
            "cookie:SESSIONID=s3cr3t"
        );
    }

    #[test]
    fn replicas_sharing_a_secret_derive_one_label_key_and_others_another() {
        let key = derived_key(b"0123456789abcdef-secret");
        assert_eq!(key, derived_key(b"0123456789abcdef-secret"));
        assert_ne!(key, derived_key(b"0123456789abcdef-other!"));
        assert_ne!(key.0, key.1);
        // Not the process key: a replica without the secret cannot produce the labels.
        assert_ne!(key, *PROCESS_KEY);
    }
}
