//! The Kubernetes manifests are consistent with their memory limits: with the settings each one
//! gives the container, every cap reached at once (`oauth_relay::budget::worst_case`) still fits
//! the container's `resources.limits.memory`, broker mode included (an operator turns it on by
//! adding variables, not by resizing the pod).

use clap::{CommandFactory, Parser};
use oauth_relay::config::{Cli, Config};

/// `name: value` pairs of the container's `env:`; values from Secrets (`valueFrom`) as `None`.
fn env_of(manifest: &str) -> Vec<(String, Option<String>)> {
    let mut env = Vec::new();
    let mut lines = manifest.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('#') {
            continue;
        }
        let Some(name) = trimmed.strip_prefix("- name: ") else {
            continue;
        };
        let next = lines.peek().map(|l| l.trim_start()).unwrap_or("");
        let value = next
            .strip_prefix("value: ")
            .map(|v| v.trim().trim_matches('"').to_string());
        if value.is_some() || next.starts_with("valueFrom:") {
            env.push((name.trim().to_string(), value));
        }
    }
    env
}

/// The container's memory limit in bytes (`limits:` then `memory: 128Mi`).
fn memory_limit(manifest: &str) -> u64 {
    let after = manifest
        .split("limits:")
        .nth(1)
        .expect("the manifest sets resource limits");
    let value = after
        .lines()
        .find_map(|l| l.trim().strip_prefix("memory: "))
        .expect("a memory limit");
    let (number, unit) = value.split_at(value.find(|c: char| !c.is_ascii_digit()).unwrap());
    let number: u64 = number.parse().unwrap();
    number
        * match unit {
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            other => panic!("unexpected unit {other}"),
        }
}

/// The configuration `serve` builds from these variables: each becomes its flag. Values that
/// come from Secrets or files here get valid stand-ins, and broker mode is switched on.
fn config_of(env: &[(String, Option<String>)]) -> Config {
    let command = Cli::command();
    let flag_of = |var: &str| {
        command
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == var))
            .and_then(|a| a.get_long())
            .map(|long| format!("--{long}"))
    };
    let stand_ins = [
        ("OAUTH_RELAY_API_TOKEN", "a-stand-in-api-token-0123456789"),
        (
            "OAUTH_RELAY_ENCRYPTION_KEY",
            "k1:BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=",
        ),
        ("WK_PUBLIC_BASE_URL", "https://relay.example.com"),
        ("WK_M365_CLIENT_ID", "00000000-0000-0000-0000-000000000000"),
        ("WK_M365_BROKER_TOKEN", "a-stand-in-broker-token-0123456789"),
    ];
    let mut argv = vec!["oauth-relay".to_string()];
    let mut seen = Vec::new();
    for (name, value) in env {
        // Files mounted in the pod are not here; the budget does not depend on them.
        if name.ends_with("_FILE") {
            continue;
        }
        let value = match value {
            Some(v) => v.clone(),
            None => stand_ins
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.to_string())
                .unwrap_or_else(|| panic!("no stand-in for the Secret-backed {name}")),
        };
        let flag = flag_of(name).unwrap_or_else(|| panic!("{name} is not a setting"));
        argv.extend([flag, value]);
        seen.push(name.clone());
    }
    for (name, value) in &stand_ins[2..] {
        if !seen.iter().any(|s| s == name) {
            argv.extend([flag_of(name).unwrap(), value.to_string()]);
        }
    }
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    let vars: oauth_relay::providers_config::Env = env
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.clone()?)))
        .collect();
    Config::from_args(cli.serve, &vars).unwrap_or_else(|e| panic!("{argv:?}: {e}"))
}

fn check(path: &str) {
    let manifest = std::fs::read_to_string(path).unwrap();
    let config = config_of(&env_of(&manifest));
    assert!(config.broker.is_some(), "broker mode counted");
    let limit = memory_limit(&manifest);
    let budget = oauth_relay::budget::worst_case(&config);
    assert!(
        budget.total() <= limit,
        "{path}: the worst case {:?} totals {} MiB, over the {} MiB limit",
        budget.items,
        budget.total() >> 20,
        limit >> 20
    );
}

#[test]
fn the_single_replica_manifest_fits_its_memory_limit() {
    check("deployment.yaml");
}

#[test]
fn the_replicas_manifest_fits_its_memory_limit() {
    check("deploy/ha/oauth-relay.yaml");
}

#[test]
fn a_manifest_over_its_limit_is_caught() {
    let manifest = std::fs::read_to_string("deployment.yaml").unwrap();
    let mut env = env_of(&manifest);
    env.retain(|(name, _)| name != "OAUTH_RELAY_MAX_CONNECTIONS");
    env.push(("OAUTH_RELAY_MAX_CONNECTIONS".into(), Some("100000".into())));
    let budget = oauth_relay::budget::worst_case(&config_of(&env));
    assert!(budget.total() > memory_limit(&manifest));
}

/// Both manifests split the listeners the same way: the internal address is set, its port is
/// the container port `internal`, the internal Service's and the NetworkPolicy's; probes use
/// the public port.
#[test]
fn both_manifests_keep_the_api_on_the_internal_port() {
    for path in ["deployment.yaml", "deploy/ha/oauth-relay.yaml"] {
        let manifest = std::fs::read_to_string(path).unwrap();
        let env = env_of(&manifest);
        let internal = env
            .iter()
            .find(|(name, _)| name == "OAUTH_RELAY_INTERNAL_ADDR")
            .and_then(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{path}: no OAUTH_RELAY_INTERNAL_ADDR"));
        let config = config_of(&env);
        let port = config.internal_addr.expect("parsed").port();
        assert_eq!(port, 8001, "{path}: {internal}");
        let documents: Vec<&str> = manifest.split("\n---\n").collect();
        let of_kind = |kind: &str, name: &str| {
            documents
                .iter()
                .find(|d| {
                    d.contains(&format!("kind: {kind}\n"))
                        && d.contains(&format!("\n  name: {name}\n"))
                })
                .unwrap_or_else(|| panic!("{path}: no {kind} {name}"))
                .to_string()
        };
        let deployment = of_kind("Deployment", "oauth-relay");
        assert!(deployment.contains("- name: internal\n              containerPort: 8001"));
        assert!(of_kind("Service", "oauth-relay-internal").contains("targetPort: internal"));
        assert!(!of_kind("Service", "oauth-relay").contains("internal"));
        let policy = of_kind("NetworkPolicy", "oauth-relay");
        let admits_internal = policy.split("- from:").nth(1).expect("a from rule");
        assert!(
            admits_internal.contains("namespaceSelector") && admits_internal.contains("port: 8001")
        );
        for probe in ["readinessProbe:", "livenessProbe:"] {
            let after = deployment.split(probe).nth(1).unwrap();
            let port = after.lines().find_map(|l| l.trim().strip_prefix("port: "));
            assert_eq!(port, Some("http"), "{path}: {probe} on the public port");
        }
    }
}
