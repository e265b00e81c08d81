//! How a session key is shown outside the session table (incidents, reports, `/v1/*`, logs).
//!
//! The values of header, cookie and query identifiers are bearer credentials: whoever presents
//! them is the session. They are shown as a keyed hash, `cookie:SESSIONID=#3f2a9c1b7e4d05aa`,
//! with a key drawn at random when the process starts (nobody can test guesses against it, and
//! the same session keeps its label for the life of the process). JWT claims (`jwt:sub=4411`)
//! name a user without being a credential, and client addresses (`ip:10.0.0.7`) are shown in the
//! incident anyway: both are shown as they are. `admin.revealSessionKeys: true` shows every key
//! verbatim (see `docs/operations.md`, "Data kept").

use std::borrow::Cow;
use std::collections::hash_map::RandomState;
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hasher};
use std::sync::LazyLock;

/// The process's pseudonym key.
static PSEUDONYM_KEY: LazyLock<RandomState> = LazyLock::new(RandomState::new);

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
    let mut hasher = PSEUDONYM_KEY.build_hasher();
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
}
