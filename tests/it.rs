//! Every integration test, in one binary: one module per feature, each in its own file
//! (`tests/broker.rs` is the module `broker`), and the support code (`tests/support/`: starting
//! the real binary, the fakes of upstream services, the harnesses) compiled once for all of them.
//! One feature's tests: `cargo nextest run -E 'test(/^broker::/)'` (docs/development.md).
//!
//! A new feature is a file `tests/<feature>.rs` and a `mod <feature>;` line below; in the file,
//! `use crate::support;` makes `support::...` what it is everywhere else.

mod support;

mod access_log;
mod broker;
mod browser_binding;
mod check_deployment;
mod cli;
mod connections;
mod connections_core;
mod container;
mod contract;
mod cors;
mod docs;
mod event_loop;
mod events;
mod failover;
mod fairness;
mod fake_microsoft;
mod fake_providers;
mod hostile;
mod kv;
mod listeners;
mod longpoll;
mod manifests;
mod mcp;
mod oidc_harness;
mod openapi;
mod owner_answers;
mod parity;
mod preemption;
mod provider_github;
mod provider_google;
mod provider_oidc;
mod providers;
mod relay;
mod replicas;
mod response_parameters;
mod retrieval_secret;
mod return_url;
mod robustness;
mod seal;
mod shares;
mod store_suite;
mod structure;

/// Cargo does not look for test files on its own (`autotests = false` in Cargo.toml), so a file
/// in tests/ that is not a module here would never run: this fails instead.
#[test]
fn every_test_file_is_a_module_of_this_binary() {
    let tests = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let root = std::fs::read_to_string(tests.join("it.rs")).unwrap();
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(&tests).unwrap() {
        let path = entry.unwrap().path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(module) = name.strip_suffix(".rs").filter(|m| *m != "it") else {
            continue;
        };
        if !root.lines().any(|l| l == format!("mod {module};")) {
            missing.push(name.to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "{missing:?} never run: add `mod <name>;` to tests/it.rs, and in the file replace \
         `mod support;` with `use crate::support;`"
    );
}
