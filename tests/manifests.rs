//! The Kubernetes packaging in `deploy/` (a Kustomize base, overlays and components): every
//! overlay renders with `kubectl kustomize`, passes the Kubernetes schemas (kubernetes-validate,
//! strict, for the oldest and the newest Kubernetes supported; the ServiceMonitor against
//! tests/fixtures/servicemonitor.schema.json: tests/support/validate_manifests.py), and what it
//! renders agrees with the relay: its settings are ones the binary accepts, every cap reached at
//! once (`oauth_relay::budget::worst_case`) fits the memory limit with broker mode and completion
//! events on (an operator turns them on by adding variables, not by resizing the pod), the API
//! stays on the internal listener, the probes use the internal port, secrets are required, the
//! containers are locked down, and several replicas come with a PodDisruptionBudget.
//!
//! Needs `kubectl` (Kustomize v5) and the tests' virtual environment (`target/test-venv`) with kubernetes-validate, which
//! scripts/test.sh installs.

use clap::{CommandFactory, Parser};
use oauth_relay::config::{Cli, Config};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The Kubernetes versions the manifests must be valid for: the oldest supported (the preStop
/// `sleep` action of overlays/redis needs 1.30) and the newest kubernetes-validate knows.
const KUBERNETES: &[&str] = &["1.30", "1.37"];

/// The port both probes use (deploy/base/probes.yaml, which says why).
const PROBE_PORT: &str = "internal";

const SINGLE: &str = "deploy/overlays/single";
const REDIS: &str = "deploy/overlays/redis";
/// overlays/redis on an in-cluster Redis Sentinel set.
const SENTINEL: &str = "deploy/overlays/sentinel";
/// An operator's own overlay: every component, generated Secret, patches.
const EXAMPLE: &str = "deploy/examples/production";
const OVERLAYS: &[&str] = &[SINGLE, REDIS, SENTINEL, EXAMPLE];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A scratch copy of `deploy/`, with each `secrets.env.example` copied to the `secrets.env` a
/// `secretGenerator` reads (an operator's is never committed), so the tree renders as it would
/// for them without writing into the work tree.
fn scratch_deploy() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "deploy-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &target);
            } else if entry.file_name() != "secrets.env" {
                std::fs::copy(entry.path(), &target).unwrap();
                if entry.file_name() == "secrets.env.example" {
                    std::fs::copy(entry.path(), to.join("secrets.env")).unwrap();
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    copy(&root().join("deploy"), &dir);
    dir
}

/// Runs the validator on a YAML stream: the documents as JSON, or the problems it reported.
fn validate(yaml: &[u8]) -> Result<Vec<Value>, String> {
    // scripts/test.sh's virtual environment, beside the target directory's tmp (so a
    // CARGO_TARGET_DIR elsewhere is honoured).
    let python = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR has a parent")
        .join("test-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: scripts/test.sh creates it and installs kubernetes-validate into it",
        python.display()
    );
    let mut child = Command::new(&python)
        .arg(root().join("tests/support/validate_manifests.py"))
        .args(KUBERNETES)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let yaml = yaml.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&yaml));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    match out.status.code() {
        Some(0) => Ok(serde_json::from_slice(&out.stdout).expect("the validator prints JSON")),
        Some(1) => Err(stderr),
        _ => panic!("the validator failed: {stderr}"),
    }
}

/// `kubectl kustomize` of an overlay, validated: its documents.
fn render(overlay: &str) -> Vec<Value> {
    let scratch = scratch_deploy();
    let dir = scratch.join(overlay.strip_prefix("deploy/").unwrap());
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .unwrap_or_else(|e| panic!("kubectl (with Kustomize v5) renders deploy/: {e}"));
    std::fs::remove_dir_all(&scratch).unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize {overlay}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    validate(&out.stdout).unwrap_or_else(|problems| panic!("{overlay}:\n{problems}"))
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// The one document of `kind` named `name` (generated ones carry a hash suffix: `name-...`).
fn named<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    of_kind(docs, kind)
        .into_iter()
        .find(|d| d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn relay_deployment(docs: &[Value]) -> &Value {
    named(docs, "Deployment", "oauth-relay")
}

fn relay_container(docs: &[Value]) -> &Value {
    let containers = relay_deployment(docs)["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    containers
        .iter()
        .find(|c| c["name"] == "oauth-relay")
        .expect("the relay container")
}

/// The relay container's environment as the pod gets it: the ConfigMaps of `envFrom`, then
/// `env`, which wins; values from Secrets as `None`.
fn env_of(docs: &[Value]) -> Vec<(String, Option<String>)> {
    let container = relay_container(docs);
    let mut env: Vec<(String, Option<String>)> = Vec::new();
    let mut set = |name: &str, value: Option<String>| {
        env.retain(|(n, _)| n != name);
        env.push((name.to_string(), value));
    };
    for source in container["envFrom"].as_array().into_iter().flatten() {
        let name = source["configMapRef"]["name"]
            .as_str()
            .expect("settings come from ConfigMaps (secrets from secretKeyRef)");
        let map = named(docs, "ConfigMap", name);
        for (key, value) in map["data"].as_object().unwrap() {
            set(key, Some(value.as_str().unwrap().to_string()));
        }
    }
    for var in container["env"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().unwrap();
        match var.get("value") {
            Some(v) => set(name, Some(v.as_str().unwrap().to_string())),
            None => {
                assert!(
                    var["valueFrom"]["secretKeyRef"].is_object(),
                    "{name}: a value, or a Secret's key"
                );
                set(name, None)
            }
        }
    }
    env
}

fn value_of<'a>(env: &'a [(String, Option<String>)], name: &str) -> Option<&'a str> {
    env.iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.as_deref())
}

/// Stand-ins for what comes from Secrets here, and for what turns broker mode and completion
/// events on when the manifest leaves them off: the budget counts both.
const STAND_IN_SECRET: &str = "a-stand-in-secret-0123456789abcdef";
const STAND_IN_KEY: &str = "k1:BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";
const ADDED_WHEN_ABSENT: &[(&[&str], &str, &str)] = &[
    (
        &["WK_PUBLIC_BASE_URL", "OAUTH_RELAY_PUBLIC_URL"],
        "WK_PUBLIC_BASE_URL",
        "https://relay.example.com",
    ),
    (
        &["WK_M365_BROKER_TOKEN", "OAUTH_RELAY_BROKER_TOKEN"],
        "WK_M365_BROKER_TOKEN",
        STAND_IN_SECRET,
    ),
    (
        &["WK_M365_CLIENT_ID", "OAUTH_RELAY_PROVIDERS"],
        "WK_M365_CLIENT_ID",
        "00000000-0000-0000-0000-000000000000",
    ),
    (
        &["OAUTH_RELAY_WEBHOOK_URL"],
        "OAUTH_RELAY_WEBHOOK_URL",
        "https://hooks.example.com/oauth-relay",
    ),
    (
        &[
            "OAUTH_RELAY_WEBHOOK_SECRET",
            "OAUTH_RELAY_WEBHOOK_SECRET_FILE",
        ],
        "OAUTH_RELAY_WEBHOOK_SECRET",
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    ),
];

/// The configuration `serve` builds from these variables, by the relay's own parsing and
/// validation: every variable must be a setting, every value acceptable. Files mounted in the
/// pod (`*_FILE`) are not here; the budget does not depend on them.
fn config_of(env: &[(String, Option<String>)]) -> Config {
    let command = Cli::command();
    let mut env: Vec<(String, String)> = env
        .iter()
        .filter(|(name, _)| !name.ends_with("_FILE"))
        .map(|(name, value)| {
            let value = value.clone().unwrap_or_else(|| match name.as_str() {
                "OAUTH_RELAY_ENCRYPTION_KEY" => STAND_IN_KEY.into(),
                _ => STAND_IN_SECRET.into(),
            });
            (name.clone(), value)
        })
        .collect();
    for (any_of, name, value) in ADDED_WHEN_ABSENT {
        if !any_of.iter().any(|n| env.iter().any(|(e, _)| e == n)) {
            env.push((name.to_string(), value.to_string()));
        }
    }
    let mut argv = vec!["oauth-relay".to_string()];
    for (name, value) in &env {
        // The providers' own variables are read from the environment map, not by clap.
        if name.starts_with("OAUTH_RELAY_PROVIDER_") {
            continue;
        }
        let arg = command
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == name.as_str()))
            .unwrap_or_else(|| panic!("{name} is not a setting of `oauth-relay serve`"));
        let long = arg.get_long().unwrap();
        if arg.get_action().takes_values() {
            argv.push(format!("--{long}={value}"));
        } else if matches!(value.as_str(), "true" | "1" | "yes" | "on") {
            argv.push(format!("--{long}"));
        }
    }
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    let vars: oauth_relay::providers_config::Env = env.into_iter().collect();
    Config::from_args(cli.serve, &vars).unwrap_or_else(|e| panic!("{argv:?}: {e}"))
}

/// A quantity such as `128Mi` in bytes.
fn bytes(quantity: &str) -> u64 {
    let split = quantity
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(quantity.len());
    let (number, unit) = quantity.split_at(split);
    let number: u64 = number.parse().unwrap();
    number
        * match unit {
            "" => 1,
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            other => panic!("unexpected unit {other} in {quantity}"),
        }
}

fn memory_limit(docs: &[Value]) -> u64 {
    bytes(
        relay_container(docs)["resources"]["limits"]["memory"]
            .as_str()
            .expect("a memory limit"),
    )
}

fn check_memory_budget(overlay: &str, docs: &[Value]) {
    let config = config_of(&env_of(docs));
    assert!(config.broker.is_some(), "broker mode counted");
    assert!(config.webhook.is_some(), "completion events counted");
    let limit = memory_limit(docs);
    let budget = oauth_relay::budget::worst_case(&config);
    assert!(
        budget.total() <= limit,
        "{overlay}: the worst case {:?} totals {} MiB, over the {} MiB limit",
        budget.items,
        budget.total() >> 20,
        limit >> 20
    );
    let resources = &relay_container(docs)["resources"];
    assert_eq!(
        resources["requests"]["memory"], resources["limits"]["memory"],
        "{overlay}: the memory request is the limit, so the node reserves the worst case"
    );
}

#[test]
fn every_overlay_renders_and_passes_the_kubernetes_schemas() {
    for overlay in OVERLAYS {
        let docs = render(overlay);
        assert!(
            docs.len() >= 5,
            "{overlay}: rendered only {} documents",
            docs.len()
        );
    }
}

#[test]
fn the_validator_refuses_what_the_api_server_would() {
    let single = Command::new("kubectl")
        .args(["kustomize", SINGLE])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(single.status.success());
    let mut yaml = String::from_utf8(single.stdout).unwrap();
    assert!(
        validate(yaml.as_bytes()).is_ok(),
        "the overlay itself passes"
    );
    // A misspelt field in a core kind, a misspelt field in the custom resource, and a kind
    // nothing describes: each must be reported, none may pass unchecked.
    yaml = yaml.replacen("  replicas: 1\n", "  replica: 1\n", 1);
    yaml.push_str(
        "---\napiVersion: monitoring.coreos.com/v1\nkind: ServiceMonitor\nmetadata:\n  name: m\n\
         spec:\n  selector: {}\n  endpoints:\n  - port: internal\n    intervall: 30s\n\
         ---\napiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n",
    );
    let problems = validate(yaml.as_bytes()).expect_err("refused");
    for expected in [
        "Deployment/oauth-relay (Kubernetes 1.30)",
        "'replica' was unexpected",
        "'intervall' was unexpected",
        "Widget/w: no schema",
    ] {
        assert!(problems.contains(expected), "{expected} in:\n{problems}");
    }
}

#[test]
fn each_overlay_fits_its_memory_limit() {
    for overlay in OVERLAYS {
        check_memory_budget(overlay, &render(overlay));
    }
}

#[test]
fn a_manifest_over_its_limit_is_caught() {
    let docs = render(SINGLE);
    let mut env = env_of(&docs);
    env.retain(|(name, _)| name != "OAUTH_RELAY_MAX_CONNECTIONS");
    env.push(("OAUTH_RELAY_MAX_CONNECTIONS".into(), Some("100000".into())));
    let budget = oauth_relay::budget::worst_case(&config_of(&env));
    assert!(budget.total() > memory_limit(&docs));
}

#[test]
#[should_panic(expected = "OAUTH_RELAY_MAX_PENDNG is not a setting")]
fn a_misspelt_setting_is_caught() {
    let mut env = env_of(&render(SINGLE));
    env.push(("OAUTH_RELAY_MAX_PENDNG".into(), Some("10".into())));
    config_of(&env);
}

fn port_of(container: &Value, name: &str) -> u64 {
    container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no container port {name}"))["containerPort"]
        .as_u64()
        .unwrap()
}

fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .unwrap()
        .iter()
        .all(|(k, v)| labels[k] == *v)
}

/// The listeners are split the same way everywhere: the settings' ports are the container ports
/// `http` and `internal`; the public Service, the Ingress and the open NetworkPolicy rule reach
/// only the public one; the internal Service, the ServiceMonitor and the callers' rule only the
/// internal one; the probes use the internal one.
#[test]
fn the_api_stays_on_the_internal_listener() {
    for overlay in OVERLAYS {
        let docs = render(overlay);
        let env = env_of(&docs);
        let config = config_of(&env);
        let container = relay_container(&docs);
        let public_port = port_of(container, "http");
        let internal_port = port_of(container, "internal");
        assert_eq!(u64::from(config.port), public_port, "{overlay}");
        let internal = config.internal_addr.expect("the listeners are split");
        assert_eq!(u64::from(internal.port()), internal_port, "{overlay}");

        let pod_labels = &relay_deployment(&docs)["spec"]["template"]["metadata"]["labels"];
        let public = named(&docs, "Service", "oauth-relay");
        let internal_service = named(&docs, "Service", "oauth-relay-internal");
        for (service, port) in [(public, "http"), (internal_service, "internal")] {
            assert!(
                selects(&service["spec"]["selector"], pod_labels),
                "{overlay}"
            );
            let targets: Vec<&Value> = service["spec"]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| &p["targetPort"])
                .collect();
            assert_eq!(
                targets,
                [port],
                "{overlay}: {}",
                service["metadata"]["name"]
            );
        }

        let policy = named(&docs, "NetworkPolicy", "oauth-relay");
        assert!(selects(
            &policy["spec"]["podSelector"]["matchLabels"],
            pod_labels
        ));
        for rule in policy["spec"]["ingress"].as_array().unwrap() {
            let ports: Vec<u64> = rule["ports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["port"].as_u64().unwrap())
                .collect();
            let open = rule.get("from").is_none();
            if ports.contains(&internal_port) {
                assert!(!open, "{overlay}: the internal port open to all");
                assert!(rule["from"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|peer| peer["namespaceSelector"].is_object()));
            } else {
                assert_eq!(ports, [public_port], "{overlay}");
            }
        }

        for ingress in of_kind(&docs, "Ingress") {
            for rule in ingress["spec"]["rules"].as_array().unwrap() {
                for path in rule["http"]["paths"].as_array().unwrap() {
                    let service = &path["backend"]["service"];
                    assert_eq!(service["name"], "oauth-relay", "{overlay}: public only");
                    assert_eq!(service["port"]["name"], "http", "{overlay}");
                }
            }
        }
        for monitor in of_kind(&docs, "ServiceMonitor") {
            let selector = &monitor["spec"]["selector"]["matchLabels"];
            assert!(selects(selector, &internal_service["metadata"]["labels"]));
            assert!(!selects(selector, &public["metadata"]["labels"]));
            for endpoint in monitor["spec"]["endpoints"].as_array().unwrap() {
                assert_eq!(endpoint["port"], "internal", "{overlay}");
                assert_eq!(endpoint["path"], "/metrics", "{overlay}");
            }
        }

        for (probe, path) in [("readinessProbe", "/ready"), ("livenessProbe", "/health")] {
            let get = &container[probe]["httpGet"];
            assert_eq!(get["path"], path, "{overlay}: {probe}");
            assert_eq!(get["port"], PROBE_PORT, "{overlay}: {probe}");
        }
    }
}

/// Every pod template in the documents, with its kind and name.
fn pod_templates(docs: &[Value]) -> Vec<(String, &Value)> {
    docs.iter()
        .filter(|d| matches!(d["kind"].as_str(), Some("Deployment" | "StatefulSet")))
        .map(|d| {
            (
                format!("{}/{}", d["kind"], d["metadata"]["name"]),
                &d["spec"]["template"]["spec"],
            )
        })
        .collect()
}

/// Fail closed: every Secret a pod reads is required (a missing Secret or key keeps the pod
/// from starting; the API token is never optional), and no overlay ships a placeholder Secret
/// that a later `kubectl apply` would write over the operator's values. The example overlay
/// generates its Secret with a content hash in the name, so a changed value rolls the pods.
#[test]
fn secrets_are_required_and_never_placeholders() {
    for overlay in OVERLAYS {
        let docs = render(overlay);
        let mut secret_names = Vec::new();
        for (what, pod) in pod_templates(&docs) {
            let containers = pod["containers"].as_array().unwrap();
            for container in containers {
                for var in container["env"].as_array().into_iter().flatten() {
                    let secret = &var["valueFrom"]["secretKeyRef"];
                    if secret.is_object() {
                        assert_ne!(
                            secret["optional"], true,
                            "{overlay} {what}: {}",
                            var["name"]
                        );
                        secret_names.push(secret["name"].as_str().unwrap().to_string());
                    }
                }
                for source in container["envFrom"].as_array().into_iter().flatten() {
                    assert!(source.get("secretRef").is_none(), "{overlay} {what}");
                }
            }
            for volume in pod["volumes"].as_array().into_iter().flatten() {
                let secret = &volume["secret"];
                if secret.is_object() {
                    assert_ne!(secret["optional"], true, "{overlay} {what}");
                    secret_names.push(secret["secretName"].as_str().unwrap().to_string());
                }
            }
        }
        let token = relay_container(&docs)["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "OAUTH_RELAY_API_TOKEN")
            .unwrap_or_else(|| panic!("{overlay}: no API token"));
        assert_eq!(token["valueFrom"]["secretKeyRef"]["key"], "api-token");

        secret_names.sort();
        secret_names.dedup();
        let rendered = of_kind(&docs, "Secret");
        if overlay == &EXAMPLE {
            assert_eq!(rendered.len(), 1, "{overlay}: the generated Secret");
            let name = rendered[0]["metadata"]["name"].as_str().unwrap();
            assert!(name.starts_with("oauth-relay-"), "{name}: a content hash");
            assert_eq!(secret_names, [name], "{overlay}: every reference renamed");
        } else {
            assert!(rendered.is_empty(), "{overlay}: no placeholder Secret");
            assert_eq!(secret_names, ["oauth-relay"], "{overlay}");
        }
    }
}

/// Every container runs locked down, with requests and limits.
#[test]
fn every_container_runs_locked_down() {
    for overlay in OVERLAYS {
        let docs = render(overlay);
        for (what, pod) in pod_templates(&docs) {
            assert_eq!(
                pod["automountServiceAccountToken"], false,
                "{overlay} {what}"
            );
            let pod_context = &pod["securityContext"];
            for container in pod["containers"].as_array().unwrap() {
                let at = format!("{overlay} {what} {}", container["name"]);
                let context = &container["securityContext"];
                let either = |key: &str| {
                    if context[key].is_null() {
                        pod_context[key].clone()
                    } else {
                        context[key].clone()
                    }
                };
                assert_eq!(either("runAsNonRoot"), true, "{at}");
                assert_eq!(either("seccompProfile")["type"], "RuntimeDefault", "{at}");
                assert_eq!(context["readOnlyRootFilesystem"], true, "{at}");
                assert_eq!(context["allowPrivilegeEscalation"], false, "{at}");
                assert_eq!(
                    context["capabilities"]["drop"],
                    serde_json::json!(["ALL"]),
                    "{at}"
                );
                assert!(context["capabilities"]["add"].is_null(), "{at}");
                for kind in ["requests", "limits"] {
                    for resource in ["cpu", "memory"] {
                        assert!(
                            container["resources"][kind][resource].is_string(),
                            "{at}: {kind}.{resource}"
                        );
                    }
                }
            }
        }
    }
}

/// In memory, exactly one pod, replaced (never rolled) and never autoscaled; with Redis, several
/// replicas rolled without losing capacity, and a PodDisruptionBudget that lets at least one go
/// and keeps at least one; an autoscaler owns the replica count alone.
#[test]
fn replicas_match_where_the_state_lives() {
    for overlay in OVERLAYS {
        let docs = render(overlay);
        let env = env_of(&docs);
        let deployment = relay_deployment(&docs);
        let spec = &deployment["spec"];
        let pod_labels = &spec["template"]["metadata"]["labels"];
        let budgets: Vec<&Value> = of_kind(&docs, "PodDisruptionBudget")
            .into_iter()
            .filter(|p| selects(&p["spec"]["selector"]["matchLabels"], pod_labels))
            .collect();
        let autoscalers = of_kind(&docs, "HorizontalPodAutoscaler");
        let in_redis = [
            "OAUTH_RELAY_REDIS_URL",
            "OAUTH_RELAY_REDIS_SENTINELS",
            "OAUTH_RELAY_REDIS_CLUSTER_NODES",
        ]
        .iter()
        .any(|name| value_of(&env, name).is_some());
        if !in_redis {
            assert_eq!(spec["replicas"], 1, "{overlay}");
            assert_eq!(spec["strategy"]["type"], "Recreate", "{overlay}");
            assert!(autoscalers.is_empty() && budgets.is_empty(), "{overlay}");
            continue;
        }
        assert_eq!(spec["strategy"]["type"], "RollingUpdate", "{overlay}");
        assert_eq!(spec["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
        let least = match autoscalers.as_slice() {
            [] => spec["replicas"].as_u64().expect("replicas"),
            [hpa] => {
                assert!(spec.get("replicas").is_none(), "{overlay}: the HPA owns it");
                assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "oauth-relay");
                hpa["spec"]["minReplicas"].as_u64().unwrap()
            }
            _ => panic!("{overlay}: several autoscalers"),
        };
        assert!(least >= 3, "{overlay}: {least} replicas");
        let [budget] = budgets.as_slice() else {
            panic!("{overlay}: one PodDisruptionBudget for the relay, not {budgets:?}")
        };
        let may_go = match (
            budget["spec"]["maxUnavailable"].as_u64(),
            budget["spec"]["minAvailable"].as_u64(),
        ) {
            (Some(max), None) => max,
            (None, Some(min)) => least.saturating_sub(min),
            other => panic!("{overlay}: {other:?}"),
        };
        assert!(
            (1..least).contains(&may_go),
            "{overlay}: {may_go} of {least}"
        );
    }
}

/// The Sentinel overlay configures one topology (the sentinels, not overlays/redis's URL), names
/// the set's own sentinels by their pods' stable names, waits for a replica before a take, and
/// runs the set as three pods that persist every write, with a disruption budget that keeps the
/// sentinels' quorum.
#[test]
fn the_sentinel_overlay_points_the_relay_at_its_own_sentinels() {
    let docs = render(SENTINEL);
    let env = env_of(&docs);
    assert_eq!(value_of(&env, "OAUTH_RELAY_REDIS_URL"), None);
    let config = config_of(&env).redis.expect("state in Redis");
    assert_eq!(config.kv.kind(), "sentinel");
    assert_eq!(config.durability.replicas, 1);
    let set = named(&docs, "StatefulSet", "oauth-relay-sentinel");
    let replicas = set["spec"]["replicas"].as_u64().unwrap();
    assert_eq!(replicas, 3);
    let service = set["spec"]["serviceName"].as_str().unwrap();
    let expected: Vec<String> = (0..replicas)
        .map(|i| format!("oauth-relay-sentinel-{i}.{service}:26379"))
        .collect();
    assert_eq!(
        value_of(&env, "OAUTH_RELAY_REDIS_SENTINELS"),
        Some(expected.join(",").as_str())
    );
    let master = value_of(&env, "OAUTH_RELAY_REDIS_MASTER_NAME").unwrap();
    let containers = set["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    let script = |name: &str| {
        containers
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} container"))["command"][2]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(script("sentinel").contains(&format!("sentinel monitor {master} ")));
    assert!(script("redis").contains("--appendfsync always"));
    assert!(named(&docs, "Service", service)["spec"]["clusterIP"] == "None");
    assert!(of_kind(&docs, "StatefulSet")
        .iter()
        .all(|s| s["metadata"]["name"] != "oauth-relay-redis"));
    let budget = named(&docs, "PodDisruptionBudget", "oauth-relay-sentinel");
    assert_eq!(
        budget["spec"]["maxUnavailable"], 1,
        "the quorum survives a drain"
    );
}

/// Kept connections outlive the pod: without Redis, OAUTH_RELAY_CONNECTIONS_FILE is on a
/// writable volume backed by a PersistentVolumeClaim the overlay renders, and the key that seals
/// it comes from the Secret; the in-cluster Redis persists every write on a claim of its own.
#[test]
fn kept_connections_live_on_storage_that_outlives_the_pods() {
    for overlay in OVERLAYS {
        let docs = render(overlay);
        let env = env_of(&docs);
        assert!(
            env.iter()
                .any(|(name, value)| name == "OAUTH_RELAY_ENCRYPTION_KEY" && value.is_none()),
            "{overlay}: the encryption key, from the Secret"
        );
        if config_of(&env).redis.is_some() {
            for redis in of_kind(&docs, "StatefulSet") {
                // Its command line, whether as `args` or as a shell script (the Sentinel set's).
                let container = &redis["spec"]["template"]["spec"]["containers"][0];
                let words: Vec<&str> = ["command", "args"]
                    .iter()
                    .filter_map(|k| container[*k].as_array())
                    .flatten()
                    .filter_map(|a| a.as_str())
                    .flat_map(|a| a.split_whitespace())
                    .map(|w| w.trim_matches('"'))
                    .collect();
                let after =
                    |flag: &str| words.iter().position(|a| *a == flag).map(|i| words[i + 1]);
                assert_eq!(after("--appendonly"), Some("yes"), "{overlay}");
                assert_eq!(after("--appendfsync"), Some("always"), "{overlay}");
                assert!(
                    redis["spec"]["volumeClaimTemplates"].is_array(),
                    "{overlay}: Redis's data on a claim"
                );
            }
            continue;
        }
        let file = value_of(&env, "OAUTH_RELAY_CONNECTIONS_FILE")
            .unwrap_or_else(|| panic!("{overlay}: no OAUTH_RELAY_CONNECTIONS_FILE"));
        let container = relay_container(&docs);
        let mount = container["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| file.starts_with(&format!("{}/", m["mountPath"].as_str().unwrap())))
            .unwrap_or_else(|| panic!("{overlay}: {file} is on no volume"));
        assert_ne!(mount["readOnly"], true, "{overlay}");
        let pod = &relay_deployment(&docs)["spec"]["template"]["spec"];
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        let claim = volume["persistentVolumeClaim"]["claimName"]
            .as_str()
            .unwrap_or_else(|| panic!("{overlay}: {file} is not on a PersistentVolumeClaim"));
        let pvc = named(&docs, "PersistentVolumeClaim", claim);
        assert_eq!(pvc["spec"]["accessModes"][0], "ReadWriteOnce");
    }
}
