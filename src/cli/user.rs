//! `proxima user add|list|remove`: the users of the Flight SQL and REST servers, in the
//! users file a running server watches (an edit takes effect within seconds).

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;

use clap::{Args, Subcommand};
use proxima_engine::{Role, Users};

use super::CliError;

/// Arguments of `proxima user`.
#[derive(Debug, Args)]
pub struct UserArgs {
    #[command(subcommand)]
    what: UserCommand,
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Add a user, or change an existing user's role and password (their logins end). The
    /// password is asked on the terminal, or read from the first line of standard input.
    Add {
        /// User name (letters, digits, '_', '-', '.').
        name: String,
        /// admin, tracer, analyst, auditor, station or ingest.
        #[arg(long)]
        role: Role,
        /// The users file (created if missing).
        #[arg(long, env = "PROXIMA_USERS", value_name = "FILE")]
        users: PathBuf,
    },
    /// List the users (name and role; never hashes).
    List {
        /// The users file.
        #[arg(long, env = "PROXIMA_USERS", value_name = "FILE")]
        users: PathBuf,
    },
    /// Remove a user: a server watching the file ends their logins (Flight SQL sessions,
    /// REST tokens) within seconds.
    Remove {
        /// User name.
        name: String,
        /// The users file.
        #[arg(long, env = "PROXIMA_USERS", value_name = "FILE")]
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
    let usage = |e: proxima_engine::UsersError| CliError::Usage(e.to_string());
    match args.what {
        UserCommand::Add { name, role, users } => {
            let password = read_password()?;
            let is_new = proxima_flight_server::add_user(&users, &name, role, &password).map_err(usage)?;
            let verb = if is_new { "added" } else { "updated" };
            super::print(format!("{verb} user {name} ({role}) in {}", users.display()))?;
        }
        UserCommand::List { users } => {
            for user in Users::load(&users).map_err(usage)?.list() {
                super::print(format!("{}\t{}", user.name, user.role))?;
            }
        }
        UserCommand::Remove { name, users } => {
            if !proxima_engine::users::remove_user(&users, &name).map_err(usage)? {
                return Err(CliError::Usage(format!("{}: no user named '{name}'", users.display())));
            }
            super::print(format!("removed user {name} from {}", users.display()))?;
        }
    }
    Ok(())
}
