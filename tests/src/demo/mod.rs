//! The one-command demo of the whole system (`scripts/demo`, binary `ordo-demo`): a real
//! local control plane, the operator and an enforcer as local processes, the sample banking
//! API from the simulator, and the manifests of `examples/bank-api/`.

pub mod enforcer;
pub mod examples;
pub mod http;
pub mod progress;
pub mod run;
pub mod show;
pub mod tls;
