//! Example manifests, embedded so that unit tests, end-to-end tests and documentation share
//! them: each sets every field its resource has (spec and status), and each is valid.

/// An `ApiProtection` with every spec and status field set.
pub const FULL_API_PROTECTION: &str = include_str!("testdata/apiprotection-full.yaml");

/// The smallest valid `ApiProtection`: only the target; everything else has a default.
pub const MINIMAL_API_PROTECTION: &str = include_str!("testdata/apiprotection-minimal.yaml");

/// Four `SequenceRule`s, one of each kind, with every other spec and status field set, as a
/// multi-document YAML stream.
pub const FULL_SEQUENCE_RULES: &str = include_str!("testdata/sequencerules-full.yaml");

/// `ApiProtection`s verifying tokens against a JWKS, one per source (`uri`, `configMapKeyRef`,
/// `secretKeyRef`): `jwks` excludes `secretRef`, so the full example cannot show it.
pub const JWKS_API_PROTECTIONS: &str = include_str!("testdata/apiprotection-jwks.yaml");
