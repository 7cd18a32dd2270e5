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
//!
//! [`Users`] is a live handle: every clone sees the same users, and
//! [`Users::watch`] reloads them when the file changes, so a user removed (or
//! given another role or password) loses access without a restart. Each user's
//! [`Users::stamp`] changes with their entry; a login remembers it and stands
//! only while it is unchanged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

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
#[derive(Debug, Clone, PartialEq, Eq)]
struct User {
    role: Role,
    password_hash: String,
}

impl User {
    /// What a login remembers of the entry: 64 bits of the SHA-256 of its role and
    /// password hash (the same on every node reading the same file).
    fn stamp(&self) -> u64 {
        use sha2::Digest as _;
        let mut digest = sha2::Sha256::new();
        digest.update(self.role.name().as_bytes());
        digest.update([0]);
        digest.update(self.password_hash.as_bytes());
        let digest = digest.finalize();
        u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
    }
}

/// The users who may log in: a handle whose clones share one set, replaced whole by a
/// reload.
#[derive(Debug, Clone, Default)]
pub struct Users {
    users: Arc<RwLock<BTreeMap<String, User>>>,
    /// Counts the reloads that changed something; [`Users::changes`] wakes on each.
    generation: Arc<tokio::sync::watch::Sender<u64>>,
}

/// What a reload changed, by user name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsersChanged {
    /// Users who were not there.
    pub added: Vec<String>,
    /// Users no longer there.
    pub removed: Vec<String>,
    /// Users whose role or password changed.
    pub changed: Vec<String>,
}

impl UsersChanged {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// A user as listed: name and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSummary {
    /// The user name.
    pub name: String,
    /// Their role.
    pub role: Role,
}

/// The shortest password `proxima user add` accepts.
pub const MIN_PASSWORD_LEN: usize = 12;

impl Users {
    /// Reads and checks a users file (every role known, every hash well-formed).
    pub fn load(path: &Path) -> Result<Self, UsersError> {
        Ok(Self {
            users: Arc::new(RwLock::new(read_users(path)?)),
            generation: Arc::default(),
        })
    }

    /// Reads the file again and replaces every user at once; on an error, the users stay as
    /// they were.
    pub fn reload(&self, path: &Path) -> Result<UsersChanged, UsersError> {
        let new = read_users(path)?;
        let mut users = self.users.write().unwrap_or_else(|e| e.into_inner());
        let mut changes = UsersChanged::default();
        for (name, user) in &new {
            match users.get(name) {
                None => changes.added.push(name.clone()),
                Some(old) if old != user => changes.changed.push(name.clone()),
                Some(_) => {}
            }
        }
        changes.removed = users.keys().filter(|name| !new.contains_key(*name)).cloned().collect();
        *users = new;
        drop(users);
        if !changes.is_empty() {
            self.generation.send_modify(|g| *g += 1);
        }
        Ok(changes)
    }

    /// Wakes whenever a reload changed some user (for ending the logins it affects).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Reloads the users from `path` whenever its contents change (checked every `every`),
    /// for as long as the runtime lives. A file that fails to load keeps the users as they
    /// were, logged as a warning each time it changes, so a bad edit never locks everyone
    /// out.
    pub fn watch(&self, path: PathBuf, every: Duration) -> tokio::task::JoinHandle<()> {
        let users = self.clone();
        tokio::spawn(async move {
            let mut seen = std::fs::read(&path).ok();
            loop {
                tokio::time::sleep(every).await;
                let now = match tokio::fs::read(&path).await {
                    Ok(bytes) => Some(bytes),
                    Err(e) => {
                        if seen.is_some() {
                            tracing::warn!(target: "proxima::auth", file = %path.display(), error = %e,
                                "the users file cannot be read: keeping the users as they were");
                        }
                        seen = None;
                        continue;
                    }
                };
                if now == seen {
                    continue;
                }
                seen = now;
                match users.reload(&path) {
                    Ok(changes) if changes.is_empty() => {}
                    Ok(changes) => tracing::info!(
                        target: "proxima::auth",
                        file = %path.display(),
                        users = users.len(),
                        added = ?changes.added,
                        removed = ?changes.removed,
                        changed = ?changes.changed,
                        "users reloaded: the logins of removed and changed users end"
                    ),
                    Err(e) => tracing::warn!(target: "proxima::auth", error = %e,
                        "the users file changed but does not load: keeping the users as they were"),
                }
            }
        })
    }

    /// Every user, by name.
    pub fn list(&self) -> Vec<UserSummary> {
        self.read()
            .iter()
            .map(|(name, user)| UserSummary {
                name: name.clone(),
                role: user.role,
            })
            .collect()
    }

    /// The role of user `name` and the stamp of their entry, which changes whenever their
    /// role or password does: a login made under one stamp stands only while it is current.
    pub fn stamp(&self, name: &str) -> Option<(Role, u64)> {
        self.read().get(name).map(|user| (user.role, user.stamp()))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, User>> {
        self.users.read().unwrap_or_else(|e| e.into_inner())
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
        Ok(Self {
            users: Arc::new(RwLock::new(map)),
            generation: Arc::default(),
        })
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether there are no users.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// The role of user `name`, if there is such a user.
    pub fn role_of(&self, name: &str) -> Option<Role> {
        self.read().get(name).map(|user| user.role)
    }

    /// The user, if `password` is theirs. Takes the same time whether or not the user exists.
    pub fn verify(&self, name: &str, password: &str) -> Option<Principal> {
        self.verify_stamped(name, password).map(|(principal, _)| principal)
    }

    /// [`Self::verify`], with the stamp of the entry the password was checked against (not
    /// of the file as it may be by the time the caller reads it again): what a login made
    /// with this password must stand on.
    pub fn verify_stamped(&self, name: &str, password: &str) -> Option<(Principal, u64)> {
        static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        // A copy of the hash: the check takes tens of milliseconds, and a reload must not
        // wait for it.
        let user = self.read().get(name).cloned();
        let (hash, role) = match &user {
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
        match (matches, role, &user) {
            (true, Some(role), Some(user)) => Some((
                Principal {
                    name: name.to_string(),
                    role,
                    issuer: None,
                },
                user.stamp(),
            )),
            _ => None,
        }
    }
}

/// Reads and checks a users file.
fn read_users(path: &Path) -> Result<BTreeMap<String, User>, UsersError> {
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
    Ok(users)
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
    let mut file = read_file(path, true)?;
    let entry = UserEntry {
        role: role.name().to_string(),
        password_hash: hash_password(password)?,
    };
    let is_new = file.users.insert(name.to_string(), entry).is_none();
    write_file(path, &file)?;
    Ok(is_new)
}

/// Removes `name` from the users file at `path`; returns whether they were there. A
/// server watching the file ends their logins at its next check.
pub fn remove_user(path: &Path, name: &str) -> Result<bool, UsersError> {
    let mut file = read_file(path, false)?;
    let was_there = file.users.remove(name).is_some();
    if was_there {
        write_file(path, &file)?;
    }
    Ok(was_there)
}

/// The users file at `path` as written (an empty one if missing and `may_be_missing`).
fn read_file(path: &Path, may_be_missing: bool) -> Result<UsersFile, UsersError> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str::<UsersFile>(&text).map_err(|e| UsersError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
        Err(e) if may_be_missing && e.kind() == std::io::ErrorKind::NotFound => Ok(UsersFile::default()),
        Err(source) => Err(UsersError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes a users file whole: a sibling file renamed over it, so that neither a crash nor
/// a server reading it meanwhile ever sees half of one.
fn write_file(path: &Path, file: &UsersFile) -> Result<(), UsersError> {
    let text = toml::to_string(file).map_err(|e| UsersError::Invalid {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let temporary = path.with_extension("toml.tmp");
    let io = |source| UsersError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(&temporary, text).map_err(io)?;
    std::fs::rename(&temporary, path).map_err(io)
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
    fn a_reload_replaces_every_user_and_says_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        add_user(&path, "alice", Role::Analyst, "correct horse battery").unwrap();
        add_user(&path, "bob", Role::Tracer, "another long password").unwrap();
        add_user(&path, "carol", Role::Auditor, "a third long password").unwrap();
        let users = Users::load(&path).unwrap();
        let shared = users.clone();
        let (alice_role, alice_stamp) = users.stamp("alice").unwrap();
        assert_eq!(alice_role, Role::Analyst);
        let bob_stamp = users.stamp("bob").unwrap();

        assert!(remove_user(&path, "alice").unwrap());
        assert!(!remove_user(&path, "alice").unwrap(), "already gone");
        add_user(&path, "carol", Role::Auditor, "carol's new password").unwrap();
        add_user(&path, "dave", Role::Admin, "dave's long password").unwrap();
        let changes = users.reload(&path).unwrap();
        assert_eq!(
            changes,
            UsersChanged {
                added: vec!["dave".into()],
                removed: vec!["alice".into()],
                changed: vec!["carol".into()],
            }
        );
        // Every clone sees the new users.
        assert_eq!(shared.stamp("alice"), None);
        assert!(shared.verify("alice", "correct horse battery").is_none());
        assert_eq!(shared.stamp("bob"), Some(bob_stamp), "bob's entry is unchanged");
        assert!(shared.verify("carol", "carol's new password").is_some());
        let names: Vec<String> = shared.list().into_iter().map(|u| u.name).collect();
        assert_eq!(names, ["bob", "carol", "dave"]);
        // A new password changes the stamp even with the same role.
        add_user(&path, "bob", Role::Tracer, "bob's replaced password").unwrap();
        users.reload(&path).unwrap();
        let (role, stamp) = users.stamp("bob").unwrap();
        assert_eq!(role, Role::Tracer);
        assert_ne!(stamp, bob_stamp.1);
        assert_ne!(stamp, alice_stamp);

        // A broken file keeps the users as they were.
        std::fs::write(&path, "[users.eve]\nrole = \"boss\"\n").unwrap();
        assert!(users.reload(&path).is_err());
        assert_eq!(users.len(), 3);
        // Removing from a missing file is an error, not an empty file.
        assert!(remove_user(&dir.path().join("none.toml"), "bob").is_err());
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
