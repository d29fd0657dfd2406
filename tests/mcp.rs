//! A real MCP client signs in through the relay: the official MCP Python SDK (pinned in
//! tests/support/python/requirements.txt) with its OAuthClientProvider, the relay's /callback as
//! its redirect URI, and a callback handler that long-polls the relay with a retrieval secret
//! (tests/support/mcp/client.py). The SDK discovers the authorization server from the MCP
//! server's protected-resource metadata (RFC 9728), reads its metadata (a real
//! node-oidc-provider, which sends `iss` in its authorization responses and says so), signs in
//! with PKCE S256 while Chromium plays the person, checks the `iss` the relay hands back (RFC
//! 9207), and calls a tool on an MCP server built with the same SDK that accepts only the
//! provider's JWT access tokens for it (tests/support/mcp/server.py).

use crate::support;
use support::oidc;

use oidc::{OidcConfig, OidcProvider};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use support::{eventually, free_port, Relay};

const SCOPE: &str = "mcp:tools";

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support/mcp")
        .join(name)
}

/// The MCP server, stopped on Drop (and when this process dies: its stdin closes).
struct McpServer {
    child: Child,
    _stdin: ChildStdin,
}

impl McpServer {
    fn start(port: u16, issuer: &str, resource: &str) -> McpServer {
        let config =
            json!({ "port": port, "issuer": issuer, "resource": resource, "scope": SCOPE });
        let mut child = Command::new(support::python::program("python"))
            .arg(script("server.py"))
            .arg(config.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the MCP server");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("\"listening\"") {
                    let _ = tx.send(());
                }
            }
        });
        let mut server = McpServer {
            child,
            _stdin: stdin,
        };
        eventually("the MCP server to listen", || {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("the MCP server exited: {status}");
            }
            rx.try_recv().ok()
        });
        server
    }
}

impl Drop for McpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_mcp_sdk_signs_in_through_the_relay_and_calls_a_protected_tool() {
    let relay_port = free_port();
    let public = format!("http://127.0.0.1:{relay_port}");
    let mcp_port = free_port();
    let resource = format!("http://127.0.0.1:{mcp_port}/mcp");
    let provider = OidcProvider::start(OidcConfig {
        resource_servers: vec![(resource.clone(), SCOPE.into())],
        ..OidcConfig::with_redirect_uris(&[&format!("{public}/callback")])
    });
    // The layout of the Kubernetes manifests: the browser reaches /callback on the public
    // listener, the agent the API on the internal one. Registered-states mode without an API
    // token: the agent claims its state with the hash of its own secret.
    let port = relay_port.to_string();
    let relay = Relay::start(&[
        "--port",
        &port,
        "--internal-addr",
        "127.0.0.1:0",
        "--require-registered-state",
    ]);
    let _mcp = McpServer::start(mcp_port, provider.issuer(), &resource);
    let ana = OidcConfig::ana();
    let config = json!({
        "mcp_url": resource,
        "relay_public": public,
        "relay_internal": relay.internal_url(""),
        "issuer": provider.issuer(),
        "client_id": provider.config().client_id,
        "client_secret": provider.config().client_secret,
        "browse": {
            "dir": oidc::harness_dir(),
            "login": ana.id,
            "password": ana.password,
        },
    });
    let out = Command::new(support::python::program("python"))
        .arg(script("client.py"))
        .arg(config.to_string())
        .current_dir(oidc::harness_dir())
        .env_remove("NODE_OPTIONS")
        .output()
        .expect("run the MCP client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "the MCP client printed no report ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let context = || {
        format!(
            "{report}\nclient stderr:\n{}\nrelay log:\n{}\nprovider log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            relay.logs().join("\n"),
            provider.logs().join("\n")
        )
    };
    // The relay registered the SDK's own state, and handed back what the provider sent,
    // `iss` included: the SDK refuses a response without it from a provider that promises it.
    assert_eq!(report["registered"], 201, "{}", context());
    assert_eq!(report["retrieved"]["status_code"], 200, "{}", context());
    assert_eq!(
        report["retrieved"]["iss"],
        provider.issuer(),
        "the relay's /api/callback answer must carry the provider's `iss` (RFC 9207) for the \
         SDK to accept the sign-in: {}",
        context()
    );
    assert!(
        out.status.success() && report.get("error").is_none(),
        "the MCP client failed: {}",
        context()
    );
    // The tool ran with a token the provider issued to this client for ana, for this server.
    assert_eq!(report["tool_error"], false, "{}", context());
    let tool: Value = serde_json::from_str(report["tool"][0].as_str().unwrap()).unwrap();
    assert_eq!(tool["subject"], "ana");
    assert_eq!(tool["client_id"], provider.config().client_id);
    assert!(
        tool["scopes"].as_array().unwrap().contains(&json!(SCOPE)),
        "{tool}"
    );
    // A person signed in, in a real browser, and left the provider for the relay's /callback.
    assert_eq!(
        report["browser"]["outcome"],
        "left_provider",
        "{}",
        context()
    );
    assert_eq!(provider.logins(), ["ana"]);
    // Through the relay, once: registered with a secret, stored, retrieved.
    for event in ["state_registered", "callback_stored", "callback_retrieved"] {
        let lines: Vec<String> = relay
            .logs()
            .into_iter()
            .filter(|l| l.contains(&format!("\"event\":\"{event}\"")))
            .collect();
        assert_eq!(lines.len(), 1, "{event}: {lines:?}");
    }
    assert!(relay
        .wait_for_log("\"event\":\"state_registered\"")
        .contains("\"retrieval_secret\":true"));
}
