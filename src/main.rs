//! Parse the command line, validate, run.

use clap::Parser;
use oauth_relay::config::{explain_parse_error, Cli, Command, Config};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return refused(&e),
    };
    match cli.command {
        Some(Command::Wait(args)) => oauth_relay::cli::wait(args),
        Some(Command::Register(args)) => oauth_relay::cli::register(args),
        Some(Command::LoginLink(args)) => oauth_relay::cli::login_link(args),
        Some(Command::Keygen(args)) => oauth_relay::cli::keygen(args),
        Some(Command::Open(args)) => oauth_relay::cli::open(args),
        Some(Command::Token(args)) => oauth_relay::cli::token(args),
        Some(Command::Healthcheck(args)) => oauth_relay::cli::healthcheck(args),
        Some(Command::CheckDeployment(args)) => oauth_relay::check::check_deployment(args),
        Some(Command::Serve(args)) => serve(*args),
        None => serve(cli.serve),
    }
}

fn serve(args: oauth_relay::config::ServeArgs) -> ExitCode {
    // Read once, here: the providers' variables have names clap cannot declare. A variable
    // that is not UTF-8 cannot be a setting of ours, and std::env::vars would panic on it.
    let env: oauth_relay::providers_config::Env = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let result = Config::from_args(args, &env)
        .map_err(oauth_relay::Fatal::from)
        .and_then(oauth_relay::serve);
    let status = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(fatal) => {
            let message = fatal.to_string();
            oauth_relay::logging::error("fatal", serde_json::json!({ "error": message }));
            ExitCode::from(1)
        }
    };
    // Log lines are written by a thread of their own: the last ones must reach stderr before
    // the process ends.
    oauth_relay::logging::flush();
    status
}

/// `--help` and `--version` print to stdout and exit 0. Anything else clap refuses exits 1, as
/// every other bad setting does (for `wait` and `login-link`, 2 means the sign-in itself
/// failed), with words naming the environment variable when the value came from one: a log
/// line when serving, a plain line for the client subcommands.
fn refused(e: &clap::Error) -> ExitCode {
    if !e.use_stderr() {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let failure = explain_parse_error(e, &argv);
    match (failure.subcommand, failure.message) {
        (None, Some(message)) => {
            oauth_relay::logging::error("fatal", serde_json::json!({ "error": message }))
        }
        (Some(subcommand), Some(message)) => eprintln!("oauth-relay {subcommand}: {message}"),
        (_, None) => {
            let _ = e.print();
        }
    }
    ExitCode::from(1)
}
