//! JWT signature and claim verification with the `jsonwebtoken` crate: fixed keys (HS256,
//! RS256, ES256) and a JWKS (RS256/384/512, PS256/384/512, ES256/384, EdDSA; see `jwks`).

use std::collections::HashMap;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::jwks::{JWKS_ALGORITHMS, JwksError, JwksSource};
use crate::config::{JwtAlgorithm, JwtVerificationConfig};

/// Why the verifier could not be built.
#[derive(Debug, thiserror::Error)]
pub enum JwtConfigError {
    #[error("session.jwtVerification.keys[{index}]: cannot read {path}: {source}")]
    Read {
        index: usize,
        path: String,
        source: std::io::Error,
    },
    #[error("session.jwtVerification.keys[{index}]: invalid key: {message}")]
    Key { index: usize, message: String },
    #[error(transparent)]
    Jwks(#[from] JwksError),
}

struct Key {
    algorithm: Algorithm,
    kid: Option<String>,
    key: DecodingKey,
}

/// Verifies tokens against the configured keys.
pub struct JwtVerifier {
    keys: Vec<Key>,
    jwks: Option<JwksSource>,
    validations: HashMap<Algorithm, Validation>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("keys", &self.keys.len())
            .field("jwks", &self.jwks)
            .finish()
    }
}

fn algorithm(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::ES256 => Algorithm::ES256,
    }
}

impl JwtVerifier {
    pub fn new(config: &JwtVerificationConfig) -> Result<Self, JwtConfigError> {
        let mut keys = Vec::with_capacity(config.keys.len());
        let mut validations = HashMap::new();
        for (index, k) in config.keys.iter().enumerate() {
            let material: Vec<u8> = match (&k.secret, &k.public_key_pem, &k.file) {
                (Some(s), _, _) => s.as_bytes().to_vec(),
                (_, Some(p), _) => p.as_bytes().to_vec(),
                (_, _, Some(path)) => {
                    let mut bytes = std::fs::read(path).map_err(|source| JwtConfigError::Read {
                        index,
                        path: path.display().to_string(),
                        source,
                    })?;
                    if k.algorithm == JwtAlgorithm::HS256 {
                        while bytes.last().is_some_and(u8::is_ascii_whitespace) {
                            bytes.pop();
                        }
                    }
                    bytes
                }
                _ => {
                    return Err(JwtConfigError::Key {
                        index,
                        message: "no key material".into(),
                    });
                }
            };
            let key = match k.algorithm {
                JwtAlgorithm::HS256 => Ok(DecodingKey::from_secret(&material)),
                JwtAlgorithm::RS256 => DecodingKey::from_rsa_pem(&material),
                JwtAlgorithm::ES256 => DecodingKey::from_ec_pem(&material),
            }
            .map_err(|e| JwtConfigError::Key {
                index,
                message: e.to_string(),
            })?;
            let alg = algorithm(k.algorithm);
            keys.push(Key {
                algorithm: alg,
                kid: k.kid.clone(),
                key,
            });
            validations
                .entry(alg)
                .or_insert_with(|| validation(config, alg));
        }
        let jwks = match &config.jwks {
            Some(j) => {
                for alg in JWKS_ALGORITHMS {
                    validations
                        .entry(*alg)
                        .or_insert_with(|| validation(config, *alg));
                }
                Some(JwksSource::new(j)?)
            }
            None => None,
        };
        Ok(Self {
            keys,
            jwks,
            validations,
        })
    }

    /// Identifies the keys in use: changes whenever the JWKS changes, so that tokens verified
    /// by a key since removed are verified again (0 without a JWKS).
    pub fn epoch(&self) -> u64 {
        self.jwks.as_ref().map_or(0, |j| j.current().epoch)
    }

    /// Keys of the current JWKS (0 without one).
    pub fn jwks_keys(&self) -> usize {
        self.jwks.as_ref().map_or(0, |j| j.current().keys.len())
    }

    /// After [`Self::verify`] refused `token`: when the JWKS lacks the key the token names (its
    /// `kid` is not in the set, or the set is empty), waits until `deadline` at most for the
    /// early refresh that may bring it (one shared by all requests, rate-limited; see `jwks`).
    /// True when the set now has such a key, so that verifying again may succeed.
    pub async fn await_key_for(&self, token: &str, deadline: tokio::time::Instant) -> bool {
        let Some(jwks) = &self.jwks else {
            return false;
        };
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return false;
        };
        if !JWKS_ALGORITHMS.contains(&header.alg) {
            // No JWKS key verifies it, whatever the set holds.
            return false;
        }
        let lacks = || {
            let set = jwks.current();
            match &header.kid {
                Some(kid) => !set.has_kid(kid),
                None => set.keys.is_empty(),
            }
        };
        lacks() && jwks.refreshed(deadline).await && !lacks()
    }

    /// The verified claims, or why the token is not acceptable.
    pub fn verify(
        &self,
        token: &str,
    ) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
        let validation = self
            .validations
            .get(&header.alg)
            .ok_or_else(|| format!("algorithm {:?} is not accepted", header.alg))?;
        let mut last_error = String::from("no key for this token");
        for key in self.keys.iter().filter(|k| k.algorithm == header.alg) {
            if let (Some(want), Some(have)) = (&header.kid, &key.kid)
                && want != have
            {
                continue;
            }
            match jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                token, &key.key, validation,
            ) {
                Ok(data) => return Ok(data.claims),
                Err(e) => last_error = e.to_string(),
            }
        }
        if let Some(jwks) = &self.jwks {
            let set = jwks.current();
            if let Some(kid) = &header.kid
                && !set.has_kid(kid)
            {
                // Perhaps a key published since the last refresh: fetch early (rate-limited).
                // This call judges with the keys at hand; `await_key_for` waits for the fetch.
                jwks.request_refresh();
                last_error = format!("no key with kid {kid:?} in the JWKS");
            } else if set.keys.is_empty() {
                jwks.request_refresh();
                last_error = "no JWKS key available yet".into();
            }
            for key in set
                .keys
                .iter()
                .filter(|k| k.algorithms.contains(&header.alg))
            {
                if let (Some(want), Some(have)) = (&header.kid, &key.kid)
                    && want != have
                {
                    continue;
                }
                match jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                    token, &key.key, validation,
                ) {
                    Ok(data) => return Ok(data.claims),
                    Err(e) => last_error = e.to_string(),
                }
            }
        }
        Err(last_error)
    }
}

fn validation(config: &JwtVerificationConfig, alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = config.leeway.std().as_secs();
    v.validate_exp = true;
    v.validate_nbf = true;
    let required: &[&str] = if config.require_exp { &["exp"] } else { &[] };
    v.set_required_spec_claims(required);
    if let Some(iss) = &config.issuer {
        v.set_issuer(&[iss]);
    }
    match &config.audience {
        Some(aud) => v.set_audience(&[aud]),
        None => v.validate_aud = false,
    }
    v
}

/// Reads the claims without verification (only when no keys are configured).
pub fn unverified_claims(token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    jsonwebtoken::dangerous::insecure_decode_claims(token).ok()
}
