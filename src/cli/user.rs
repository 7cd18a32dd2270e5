//! `proxima user add`: adds or updates a user of the Flight SQL (and REST) servers.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;

use clap::{Args, Subcommand};
use proxima_engine::Role;

use super::CliError;

/// Arguments of `proxima user`.
#[derive(Debug, Args)]
pub struct UserArgs {
    #[command(subcommand)]
    what: UserCommand,
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Add a user, or change an existing user's role and password. The password is asked
    /// on the terminal, or read from the first line of standard input.
    Add {
        /// User name (letters, digits, '_', '-', '.').
        name: String,
        /// admin, tracer, analyst, auditor, station or ingest.
        #[arg(long)]
        role: Role,
        /// The users file (created if missing).
        #[arg(long, value_name = "FILE")]
        users: PathBuf,
    },
}

fn read_password() -> Result<String, CliError> {
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("password: ")?;
        let second = rpassword::prompt_password("again: ")?;
        if first != second {
            return Err(CliError::Usage("the two passwords differ".into()));
        }
        Ok(first)
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }
}

/// Runs `proxima user`.
pub async fn run(args: UserArgs) -> Result<(), CliError> {
    let UserCommand::Add { name, role, users } = args.what;
    let password = read_password()?;
    let is_new =
        proxima_flight_server::add_user(&users, &name, role, &password).map_err(|e| CliError::Usage(e.to_string()))?;
    let verb = if is_new { "added" } else { "updated" };
    super::print(format!("{verb} user {name} ({role}) in {}", users.display()))?;
    Ok(())
}
