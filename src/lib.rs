//! oauth-relay: receives OAuth redirects for programs that cannot, and hands each code out once.

pub mod app;
pub mod audit;
pub mod broker;
pub mod broker_config;
pub mod budget;
pub mod cli;
pub mod client_ip;
pub mod config;
pub mod connections;
pub mod cors;
pub mod error;
pub mod events;
pub mod health;
pub mod http;
pub mod json_body;
pub mod keyring;
pub mod kv;
pub mod lifecycle;
pub mod logging;
pub mod outbound;
pub mod pages;
pub mod provider;
pub mod providers_config;
pub mod random;
pub mod relay;
pub mod routes;
pub mod seal;
pub mod secret;
pub mod server;
pub mod store;
pub mod waiters;

pub use lifecycle::{serve, Fatal};
