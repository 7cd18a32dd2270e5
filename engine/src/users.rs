//! Users, passwords and bearer tokens.
//!
//! Users live in a TOML file (`--users`), one table per user:
//!
//! ```toml
//! [users.alice]
//! role = "analyst"
//! password_hash = "$argon2id$v=19$m=19456,t=2,p=1$…"
//! ```
//!
//! Passwords are kept only as argon2id hashes. A successful Basic login
//! yields a random bearer token that expires (default one hour).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::access::{Principal, Role};
use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::{Deserialize, Serialize};

/// Errors reading or writing a users file.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid users file.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        reason: String,
    },
    /// A user name or password was refused.
    #[error("{0}")]
    Refused(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    role: String,
    password_hash: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    users: BTreeMap<String, UserEntry>,
}

/// A checked user: role and password hash.
#[derive(Debug, Clone)]
struct User {
    role: Role,
    password_hash: String,
}

/// The users who may log in.
#[derive(Debug, Clone, Default)]
pub struct Users {
    users: BTreeMap<String, User>,
}

/// The shortest password `proxima user add` accepts.
pub const MIN_PASSWORD_LEN: usize = 12;

impl Users {
    /// Reads and checks a users file (every role known, every hash well-formed).
    pub fn load(path: &Path) -> Result<Self, UsersError> {
        let text = std::fs::read_to_string(path).map_err(|source| UsersError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let file: UsersFile = toml::from_str(&text).map_err(|e| UsersError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let mut users = BTreeMap::new();
        for (name, entry) in file.users {
            let invalid = |reason: String| UsersError::Invalid {
                path: path.to_path_buf(),
                reason: format!("user '{name}': {reason}"),
            };
            let role: Role = entry.role.parse().map_err(invalid)?;
            PasswordHash::new(&entry.password_hash)
                .map_err(|e| invalid(format!("password_hash is not an argon2 hash: {e}")))?;
            users.insert(
                name.clone(),
                User {
                    role,
                    password_hash: entry.password_hash,
                },
            );
        }
        Ok(Self { users })
    }

    /// Exactly these users, with these roles and passwords (for a loopback server without a
    /// users file, which makes one login per role for the run).
    pub fn generated(users: &[(&str, Role, &str)]) -> Result<Self, UsersError> {
        let mut map = BTreeMap::new();
        for (name, role, password) in users {
            map.insert(
                name.to_string(),
                User {
                    role: *role,
                    password_hash: hash_password(password)?,
                },
            );
        }
        Ok(Self { users: map })
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether there are no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The role of user `name`, if there is such a user.
    pub fn role_of(&self, name: &str) -> Option<Role> {
        self.users.get(name).map(|user| user.role)
    }

    /// The user, if `password` is theirs. Takes the same time whether or not the user exists.
    pub fn verify(&self, name: &str, password: &str) -> Option<Principal> {
        static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let (hash, role) = match self.users.get(name) {
            Some(user) => (user.password_hash.as_str(), Some(user.role)),
            None => (
                DUMMY
                    .get_or_init(|| hash_password("no such user, no such password").unwrap_or_default())
                    .as_str(),
                None,
            ),
        };
        let parsed = PasswordHash::new(hash).ok()?;
        let matches = Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok();
        match (matches, role) {
            (true, Some(role)) => Some(Principal {
                name: name.to_string(),
                role,
            }),
            _ => None,
        }
    }
}

/// Whether `password` matches an argon2 `hash` (false for a malformed hash).
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
        .unwrap_or(false)
}

/// Hashes a password with argon2id and a random salt.
pub fn hash_password(password: &str) -> Result<String, UsersError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UsersError::Refused(format!("cannot hash the password: {e}")))
}

/// Adds `name` to the users file at `path` (created if missing), or updates its role and
/// password; returns whether the user is new. Other users and their hashes are kept as they are.
pub fn add_user(path: &Path, name: &str, role: Role, password: &str) -> Result<bool, UsersError> {
    let valid_name = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !valid_name {
        return Err(UsersError::Refused(format!(
            "user name '{name}': use 1 to 64 letters, digits, '_', '-' or '.'"
        )));
    }
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(UsersError::Refused(format!(
            "the password must have at least {MIN_PASSWORD_LEN} characters"
        )));
    }
    let mut file = match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str::<UsersFile>(&text).map_err(|e| UsersError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => UsersFile::default(),
        Err(source) => {
            return Err(UsersError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let entry = UserEntry {
        role: role.name().to_string(),
        password_hash: hash_password(password)?,
    };
    let is_new = file.users.insert(name.to_string(), entry).is_none();
    let text = toml::to_string(&file).map_err(|e| UsersError::Invalid {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    // Write a sibling file and rename it over, so a crash never leaves a half-written users file.
    let temporary = path.with_extension("toml.tmp");
    let io = |source| UsersError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(&temporary, text).map_err(io)?;
    std::fs::rename(&temporary, path).map_err(io)?;
    Ok(is_new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_then_verify_then_update() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        assert!(add_user(&path, "alice", Role::Analyst, "correct horse battery").unwrap());
        assert!(add_user(&path, "bob", Role::Tracer, "another long password").unwrap());
        let users = Users::load(&path).unwrap();
        assert_eq!(users.len(), 2);
        let alice = users.verify("alice", "correct horse battery").unwrap();
        assert_eq!(alice.role, Role::Analyst);
        assert!(users.verify("alice", "wrong password!").is_none());
        assert!(users.verify("carol", "correct horse battery").is_none());
        assert!(!std::fs::read_to_string(&path).unwrap().contains("correct horse"));

        assert!(!add_user(&path, "alice", Role::Admin, "a brand new password").unwrap());
        let users = Users::load(&path).unwrap();
        assert!(users.verify("alice", "correct horse battery").is_none());
        assert_eq!(users.verify("alice", "a brand new password").unwrap().role, Role::Admin);
        assert!(
            users.verify("bob", "another long password").is_some(),
            "others are kept"
        );
    }

    #[test]
    fn bad_input_is_refused_with_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let short = add_user(&path, "alice", Role::Analyst, "short").unwrap_err();
        assert!(short.to_string().contains("at least 12 characters"), "{short}");
        let name = add_user(&path, "al ice", Role::Analyst, "long enough password").unwrap_err();
        assert!(name.to_string().contains("user name 'al ice'"), "{name}");
        assert!(!path.exists(), "nothing written");

        std::fs::write(&path, "[users.eve]\nrole = \"boss\"\npassword_hash = \"x\"\n").unwrap();
        let role = Users::load(&path).unwrap_err().to_string();
        assert!(role.contains("user 'eve': unknown role 'boss'"), "{role}");
        std::fs::write(&path, "[users.eve]\nrole = \"admin\"\npassword_hash = \"plain\"\n").unwrap();
        let hash = Users::load(&path).unwrap_err().to_string();
        assert!(hash.contains("not an argon2 hash"), "{hash}");
    }
}
