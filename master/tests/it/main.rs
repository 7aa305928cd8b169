//! The integration tests of tako-server, one binary: each file is a module (a test is named
//! `<file>::<test>`, so `cargo nextest run -p tako-server -E 'test(/^edge::/)'` runs edge.rs).
//! `common` is the shared harness.

mod common;

mod acme;
mod app_hardening;
mod app_isolation;
mod cache;
mod chaos;
mod client_limits;
mod compression;
mod ctl_output;
mod deploy;
mod drain_events;
mod drain_keepalive;
mod edge;
mod edge_limits;
mod foundation;
mod generated_docs;
mod h2_limits;
mod hardening;
mod hostile_worker;
mod instances;
mod mgmt_protocol;
mod operator_gaps;
mod packaging;
mod proxy_protocol;
mod quickstart;
mod release_paths;
mod request_ids;
mod secret_leaks;
mod security_edge;
mod status_exposure;
mod worker_sandbox;
mod zero_downtime;
