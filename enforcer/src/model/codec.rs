//! Serialized form of the model: JSON (stable, inspectable, versioned by `format`) compressed
//! with gzip. Models of a few hundred operations stay well under the 1 MiB a ConfigMap holds.
//!
//! `format` changes only when a field changes meaning. Fields added with a serde default (such
//! as `OperationStats::exposure`) keep the format: an older model loads with them empty, and
//! an older build ignores them (no `deny_unknown_fields` on the model types), so replicas of
//! two versions still merge during a rolling update (tested in `model::exposure`). A delta's
//! negative part (`takenBack`, `model::taken_back`) is such a field: an older operator merges
//! the rest of the delta and leaves the take-back to the replica, as before it existed.

use std::io::{Read, Write};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

use super::{LearnedModel, ModelError};

/// Largest uncompressed model accepted (guards against decompression bombs).
pub const MAX_MODEL_JSON_BYTES: u64 = 64 * 1024 * 1024;

pub fn encode(model: &LearnedModel) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    // Writing into a Vec cannot fail, and serializing plain counts cannot fail either; an
    // error would leave a truncated stream that `decode` rejects.
    if serde_json::to_writer(&mut encoder, model).is_err() {
        return Vec::new();
    }
    let _ = encoder.flush();
    encoder.finish().unwrap_or_default()
}

pub fn decode(bytes: &[u8]) -> Result<LearnedModel, ModelError> {
    let mut json = Vec::new();
    GzDecoder::new(bytes)
        .take(MAX_MODEL_JSON_BYTES + 1)
        .read_to_end(&mut json)?;
    if json.len() as u64 > MAX_MODEL_JSON_BYTES {
        return Err(ModelError::Inconsistent(format!(
            "model exceeds {MAX_MODEL_JSON_BYTES} bytes uncompressed"
        )));
    }
    Ok(serde_json::from_slice(&json)?)
}
