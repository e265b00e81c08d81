//! Ordo's performance benchmark: the enforcer side by side with direct access, nginx, and nginx
//! with ModSecurity + the OWASP CRS, under one request mix, on loopback, bounded in time.
//!
//! `scripts/bench` installs what is missing, builds, and runs `ordo-bench run`, which starts
//! every process (pinned with `taskset`), drives the load (wrk for closed-loop throughput, the
//! built-in open-loop generator for the fixed-rate latency run), measures memory, and writes
//! `target/bench/results.json` and `target/bench/throughput.png`; `ordo-bench instructions` counts
//! user-space instructions per request under valgrind. Method: `docs/benchmarks.md`.

pub mod chart;
pub mod forwarding;
pub mod instructions;
pub mod loadgen;
pub mod machine;
pub mod mix;
pub mod nginx;
pub mod procs;
pub mod results;
pub mod rounds;
pub mod run;
pub mod scenario;
pub mod sessions;
pub mod upstream;
pub mod wrk;
