//! The admin token as the compiled policy keeps it: a digest, compared in constant time.
//! Checked by `crate::admin::auth`.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The admin token as kept for comparison: its digest (the token itself is not needed).
#[derive(Clone)]
pub struct AdminToken([u8; 32]);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    pub fn new(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// Whether `given` is the token (constant time in the token's content and length).
    pub fn matches(&self, given: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        bool::from(self.0.ct_eq(&digest))
    }
}
