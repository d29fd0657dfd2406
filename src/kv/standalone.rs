//! One Redis server at a URL (`redis://` or `rediss://`): the topology without a choice to make.

use super::node::{self, Conn, Env, Node};
use super::settings::{HostPort, KvSettings};
use super::topology::Unreached;
use crate::secret::Secret;
use redis::IntoConnectionInfo;
use std::sync::Arc;

pub(crate) struct Standalone {
    node: Arc<Node>,
}

impl Standalone {
    pub fn new(url: &Secret, s: &KvSettings, env: &Env) -> Result<Standalone, String> {
        // The URL may hold a password: only the setting's name goes into the error.
        let info = url.expose().into_connection_info().map_err(|e| {
            format!(
                "OAUTH_RELAY_REDIS_URL is not a valid redis:// or rediss:// URL: {}",
                e.category()
            )
        })?;
        let addr = match info.addr() {
            redis::ConnectionAddr::Tcp(host, port)
            | redis::ConnectionAddr::TcpTls { host, port, .. } => HostPort {
                host: host.clone(),
                port: *port,
            },
            _ => return Err("OAUTH_RELAY_REDIS_URL must name a host".into()),
        };
        let client = node::client(
            info,
            s.username.as_deref(),
            s.password.as_ref(),
            s.ca_pem.as_deref(),
            redis::ProtocolVersion::RESP3,
        )
        .map_err(|e| format!("OAUTH_RELAY_REDIS_URL: {}", e.category()))?;
        Ok(Standalone {
            node: Node::new(addr, client, env),
        })
    }

    pub async fn primary(&self) -> Result<(Arc<Node>, Conn), Unreached> {
        let conn = self
            .node
            .shared()
            .await
            .map_err(|e| Unreached(format!("{}: {e}", self.node.addr)))?;
        Ok((self.node.clone(), conn))
    }
}
