//! The one-command demo of the whole system (`scripts/demo`, binary `ordo-demo`): a real
//! local control plane, the operator, the enforcers and the sample banking API from the
//! simulator, either in Pods on the local cluster's real node ([`node`]) or as local processes
//! where kwok plays the Pods, and the manifests of `examples/bank-api/`.

pub mod enforcer;
pub mod examples;
pub mod http;
pub mod node;
pub mod progress;
pub mod run;
pub mod show;
pub mod tls;
