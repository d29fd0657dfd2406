//! Parse the command line, validate, run.

use clap::Parser;
use oauth_relay::config::{Cli, Command, Config};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Wait(args)) => oauth_relay::cli::wait(args),
        Some(Command::LoginLink(args)) => oauth_relay::cli::login_link(args),
        Some(Command::Healthcheck(args)) => oauth_relay::cli::healthcheck(args),
        Some(Command::Serve(args)) => serve(*args),
        None => serve(cli.serve),
    }
}

fn serve(args: oauth_relay::config::ServeArgs) -> ExitCode {
    let result = Config::from_args(args).and_then(oauth_relay::serve);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            oauth_relay::logging::error("fatal", serde_json::json!({ "error": message }));
            ExitCode::from(1)
        }
    }
}
