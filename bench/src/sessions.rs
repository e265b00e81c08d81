//! The session pool: one signed bearer token (HS256 JWT with a `sub` claim) and the values of
//! [`crate::mix::SessionVars`] per session, written once to a tab-separated file that both the
//! wrk Lua script and the Rust generator read.

use std::io::{BufRead, BufWriter, Write};
use std::path::Path;

use jsonwebtoken::{EncodingKey, Header, encode};
use serde::Serialize;

use crate::mix::{SessionVars, session_line};

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iss: &'static str,
    iat: u64,
    exp: u64,
    scope: &'static str,
}

/// Signs the token of one session.
pub fn token(
    vars: &SessionVars,
    secret: &str,
    now_s: u64,
) -> Result<String, jsonwebtoken::errors::Error> {
    let claims = Claims {
        sub: &vars.sub,
        iss: "https://auth.bank.example",
        iat: now_s,
        exp: now_s + 24 * 3600,
        scope: "accounts payments",
    };
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// Writes `count` sessions (indexes `0..count`) to `path`.
pub fn write_file(path: &Path, count: u64, secret: &str) -> anyhow::Result<()> {
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let mut out = BufWriter::new(std::fs::File::create(path)?);
    for index in 0..count {
        let vars = SessionVars::for_index(index);
        let token = token(&vars, secret, now_s)?;
        writeln!(out, "{}", session_line(&token, &vars))?;
    }
    out.flush()?;
    Ok(())
}

/// One session as read back: the `Authorization` header value and the values.
#[derive(Debug, Clone)]
pub struct PooledSession {
    pub authorization: String,
    pub vars: SessionVars,
}

/// Reads sessions `first..first + count` from `path`.
pub fn read_range(path: &Path, first: u64, count: u64) -> anyhow::Result<Vec<PooledSession>> {
    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut out = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    for (index, line) in file.lines().enumerate() {
        let index = index as u64;
        if index < first {
            continue;
        }
        if index >= first + count {
            break;
        }
        let line = line?;
        let mut cols = line.split('\t');
        let token = cols.next().unwrap_or_default();
        // The values are a pure function of the index; re-deriving them keeps one source of truth
        // and the file check below catches a file written by another version.
        let vars = SessionVars::for_index(index);
        if cols.next() != Some(vars.sub.as_str()) {
            anyhow::bail!(
                "{}: line {} does not hold session {}",
                path.display(),
                index + 1,
                vars.sub
            );
        }
        out.push(PooledSession {
            authorization: format!("Bearer {token}"),
            vars,
        });
    }
    if (out.len() as u64) < count {
        anyhow::bail!(
            "{}: holds {} sessions from {first}, {count} needed",
            path.display(),
            out.len()
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_round_trips_and_tokens_carry_the_subject() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.tsv");
        write_file(&path, 50, "secret").unwrap();
        let read = read_range(&path, 10, 5).unwrap();
        assert_eq!(read.len(), 5);
        assert_eq!(read[0].vars.sub, "cust-0000010");
        let token = read[0].authorization.strip_prefix("Bearer ").unwrap();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(
            token,
            &jsonwebtoken::DecodingKey::from_secret(b"secret"),
            &validation,
        )
        .unwrap();
        assert_eq!(data.claims["sub"], "cust-0000010");
        assert!(read_range(&path, 45, 10).is_err());
    }
}
