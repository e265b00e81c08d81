//! Code shared by the fuzz targets and by ordinary tests that replay their corpus.

pub mod upstream_diff;
