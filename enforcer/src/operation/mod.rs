//! Operations: method + templated path. Declared templates (rules, limits, OpenAPI) come
//! first; other paths are templated from traffic, per path position, within caps.

mod pattern;

use std::sync::Arc;

use serde::Serialize;

pub use pattern::{METHODS, OperationPattern, PatternSegment, normalize_operation, split_path};

/// Where an operation's template comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum OperationOrigin {
    /// Named by a rule, a rate limit or the OpenAPI document.
    Declared,
    /// Templated from traffic.
    Learned,
    /// The catch-all of one method once the learned-template cap is reached.
    Overflow,
    /// A path that is not declared while learning templates is turned off.
    Unknown,
}

/// A resolved operation. Cheap to clone through `Arc`; ids are stable for the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub id: u32,
    /// Display form, e.g. `GET /api/v1/accounts/{var1}/balance`.
    pub template: Arc<str>,
    pub origin: OperationOrigin,
}

mod canonical;
pub mod openapi;
mod paths;
mod query;
mod resolver;
mod shape;
mod target;

pub use canonical::{TargetError, canonical_literal, canonical_path};
pub use openapi::{OpenApiDocument, OpenApiError, OperationSchema, load_openapi, parse_openapi};
pub use paths::{
    Backslash, DoubleEncoding, EncodedSlash, PathParameters, PathsConfig, RepeatedSlashes,
    TrailingSlash,
};
pub use query::{QueryPairs, parse_query, parse_request_query};
pub use resolver::{
    DeclaredSet, OperationResolver, OperationsConfig, Resolved, ResolverStats, SaturatedPosition,
    Template,
};
pub use shape::{MAX_LITERAL_SEGMENT_BYTES, looks_variable};
pub use target::{CanonicalTarget, canonical_target, check_method};
