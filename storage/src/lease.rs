//! One process at a time on a piece of work ([`Work`]: erasure, compaction, housekeeping)
//! among the processes that share a store, such as several `proxima serve` nodes.
//!
//! A lease is a generation file, `<folder of the work>/<generation>.json`, made by a conditional
//! put (create only): of two processes that try to take the same generation, exactly one
//! succeeds, on a local disk and on S3 alike. The newest generation is the lease; it names
//! its holder and when it expires. A process takes the lease when the newest generation is
//! released or expired, by making the next one (and deleting the older ones); its holder renews it (rewrites its
//! own file) between files, and before each file checks that no newer generation was made
//! (by a process that found it expired): if one was, it stops. Two erasers could then
//! overlap by at most one file each, and the lineage markers resolve two rewrites of one
//! file (one wins, the other is hidden); what the loser removed is removed again by the next
//! round, since revocations go only after every table is done. Compaction is as safe
//! without its lease (lineage markers) and retention's deletes are idempotent: their
//! leases only keep two nodes from doing the same work twice.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use proxima_engine::Store;
use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use crate::error::{Error, Result};

/// How long a lease lasts without renewal: longer than the rewrite of any one file.
pub const LEASE_TTL: Duration = Duration::from_secs(15 * 60);

/// How long a rollup writer's lease lasts without renewal (see [`Work::ttl`]).
pub const ROLLUP_LEASE_TTL: Duration = Duration::from_secs(2 * 60);

#[derive(Debug, Serialize, Deserialize)]
struct LeaseFile {
    holder: String,
    expires: DateTime<Utc>,
}

/// The work a lease is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Erasure of revoked devices and of devices retention expires.
    Erasure,
    /// Compaction of recent days.
    Compaction,
    /// Retention, index upkeep and sweeps.
    Housekeeping,
    /// A write that adds to the contact rollup (a flush, a day's rebuild): held from the
    /// resolution of its sightings against the store to its commit, so that two nodes'
    /// flushes never resolve against a store without the other's rows (see `rollup.rs`).
    Rollup,
}

impl Work {
    /// Its name, in logs and errors.
    pub fn name(self) -> &'static str {
        match self {
            Self::Erasure => "erasure",
            Self::Compaction => "compaction",
            Self::Housekeeping => "housekeeping",
            Self::Rollup => "rollup",
        }
    }

    /// How long its lease lasts without renewal: longer than the rewrite of any one file,
    /// and for a rollup writer longer than a flush (a node that died holding it stops the
    /// others' flushes for that long at most; their rows wait in their logs meanwhile).
    pub fn ttl(self) -> Duration {
        match self {
            Self::Rollup => ROLLUP_LEASE_TTL,
            Self::Erasure | Self::Compaction | Self::Housekeeping => LEASE_TTL,
        }
    }

    /// Its folder: the erasure lease where it always was, the others under `_leases/`.
    fn folder(self, store: &Store) -> Path {
        match self {
            Self::Erasure => store.root().clone().join(crate::erasure::ERASURE_FOLDER).join("lease"),
            other => store.root().clone().join("_leases").join(other.name()),
        }
    }
}

/// A lease, held.
#[derive(Debug)]
pub struct Lease {
    store: Store,
    work: Work,
    generation: u64,
    holder: String,
}

fn location(store: &Store, work: Work, generation: u64) -> Path {
    work.folder(store).join(format!("{generation:020}.json"))
}

/// The newest generation and its file (`None` if there is none; the file `None` if it was
/// deleted meanwhile).
async fn newest(store: &Store, work: Work) -> Result<Option<(u64, Option<LeaseFile>)>> {
    let listed: Vec<_> = store
        .object_store()
        .list(Some(&work.folder(store)))
        .try_collect()
        .await?;
    let Some(generation) = listed
        .iter()
        .filter_map(|m| m.location.filename()?.strip_suffix(".json")?.parse::<u64>().ok())
        .max()
    else {
        return Ok(None);
    };
    let at = location(store, work, generation);
    let file = match store.object_store().get(&at).await {
        Ok(found) => Some(
            serde_json::from_slice(&found.bytes().await?)
                .map_err(|e| Error::Invalid(format!("{at}: not a lease: {e}")))?,
        ),
        Err(object_store::Error::NotFound { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    Ok(Some((generation, file)))
}

/// Who holds generation `generation` of `work`'s lease (`None` if it is not there).
async fn holder_of(store: &Store, work: Work, generation: u64) -> Result<Option<String>> {
    let at = location(store, work, generation);
    match store.object_store().get(&at).await {
        Ok(found) => {
            let file: LeaseFile = serde_json::from_slice(&found.bytes().await?)
                .map_err(|e| Error::Invalid(format!("{at}: not a lease: {e}")))?;
            Ok(Some(file.holder))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A holder name for this process, for logs and for whoever finds the lease file.
pub fn this_process() -> String {
    format!("pid {} ({})", std::process::id(), uuid::Uuid::new_v4())
}

impl Lease {
    /// Takes the erasure lease (see [`Self::acquire_for`]).
    pub async fn acquire(store: &Store, holder: &str, now: DateTime<Utc>) -> Result<Option<Self>> {
        Self::acquire_for(Work::Erasure, store, holder, now).await
    }

    /// Takes the lease of `work` for `holder` (a name for logs: host and process), or
    /// `None` if another process holds it and it has not expired at `now`.
    pub async fn acquire_for(work: Work, store: &Store, holder: &str, now: DateTime<Utc>) -> Result<Option<Self>> {
        let next = match newest(store, work).await? {
            None => 1,
            Some((generation, Some(file))) if file.expires > now => {
                if work == Work::Rollup {
                    // Taken and given back at every flush: waited for, not news.
                    debug!(target: "proxima::lease", work = work.name(), holder = %file.holder, generation, "another process holds the lease");
                } else {
                    info!(target: "proxima::lease", work = work.name(), holder = %file.holder, generation, "another process holds the lease; not this round");
                }
                return Ok(None);
            }
            Some((generation, _)) => generation + 1,
        };
        let lease = Self {
            store: store.clone(),
            work,
            generation: next,
            holder: holder.to_string(),
        };
        let create = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match store
            .object_store()
            .put_opts(&location(store, work, next), lease.payload(now), create)
            .await
        {
            Ok(_) => {}
            // The put may have been done and its answer lost (a connection reset after the
            // request), and a retry of it then finds the file: whose it is says whether the
            // lease is ours, or another process's (which must not be waited for by its own
            // maker until it expires).
            Err(e @ object_store::Error::AlreadyExists { .. }) => match holder_of(store, work, next).await {
                Ok(Some(found)) if found == holder => {}
                Ok(_) | Err(_) => {
                    debug!(target: "proxima::lease", work = work.name(), generation = next, error = %e, "another process took this generation");
                    return Ok(None);
                }
            },
            Err(e) => match holder_of(store, work, next).await {
                Ok(Some(found)) if found == holder => {}
                _ => return Err(e.into()),
            },
        }
        // Older generations are no one's any more: those still there (one, usually; not
        // every number since the first, which would grow with every tick).
        let listed: Vec<_> = store
            .object_store()
            .list(Some(&work.folder(store)))
            .try_collect()
            .await?;
        let older = listed.iter().filter_map(|m| {
            let generation = m.location.filename()?.strip_suffix(".json")?.parse::<u64>().ok()?;
            (generation < next).then_some(generation)
        });
        for old in older {
            match store.object_store().delete(&location(store, work, old)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Some(lease))
    }

    fn payload(&self, now: DateTime<Utc>) -> PutPayload {
        let expires = now + chrono::Duration::from_std(self.work.ttl()).expect("the lease TTL fits");
        let file = LeaseFile {
            holder: self.holder.clone(),
            expires,
        };
        PutPayload::from(serde_json::to_vec(&file).expect("a lease always serialises"))
    }

    /// Checks the lease is still this process's (no newer generation) and renews it until
    /// `now` + its work's TTL; an error if another process took it over.
    pub async fn renew(&self, now: DateTime<Utc>) -> Result<()> {
        match newest(&self.store, self.work).await? {
            Some((generation, _)) if generation == self.generation => {}
            _ => {
                return Err(Error::Invalid(format!(
                    "the {} lease (generation {}) expired and another process took it over; this round stops \
                     and the next one finishes the work",
                    self.work.name(),
                    self.generation
                )));
            }
        }
        self.store
            .object_store()
            .put(&location(&self.store, self.work, self.generation), self.payload(now))
            .await?;
        Ok(())
    }

    /// Gives the lease up: its generation stays, expired, so generations only grow (a
    /// process that held an old one can never take a new one for its own).
    pub async fn release(self) -> Result<()> {
        let file = LeaseFile {
            holder: self.holder.clone(),
            expires: DateTime::<Utc>::MIN_UTC,
        };
        self.store
            .object_store()
            .put(
                &location(&self.store, self.work, self.generation),
                PutPayload::from(serde_json::to_vec(&file).expect("a lease always serialises")),
            )
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_holder_at_a_time_and_an_expired_lease_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(dir.path()).unwrap();
        let now = Utc::now();
        let a = Lease::acquire(&store, "a", now).await.unwrap().expect("free");
        assert!(Lease::acquire(&store, "b", now).await.unwrap().is_none(), "a holds it");
        a.renew(now).await.unwrap();
        // A stalls past its expiry: B takes the next generation, and A learns it lost.
        let later = now + chrono::Duration::from_std(LEASE_TTL).unwrap() + chrono::Duration::seconds(1);
        let b = Lease::acquire(&store, "b", later).await.unwrap().expect("expired");
        assert_eq!(b.generation, a.generation + 1);
        let lost = a.renew(later).await.unwrap_err().to_string();
        assert!(lost.contains("took it over"), "{lost}");
        // Released, it is free at once, and generations keep growing.
        b.release().await.unwrap();
        let c = Lease::acquire(&store, "c", later).await.unwrap().expect("released");
        assert_eq!(c.generation, 3);
    }

    #[tokio::test]
    async fn leases_of_different_work_are_independent() {
        let store = Store::in_memory();
        let now = Utc::now();
        let erasing = Lease::acquire(&store, "a", now).await.unwrap().expect("free");
        let compacting = Lease::acquire_for(Work::Compaction, &store, "b", now).await.unwrap();
        assert!(compacting.is_some(), "another work's lease is free");
        assert!(
            Lease::acquire_for(Work::Compaction, &store, "c", now)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            Lease::acquire_for(Work::Housekeeping, &store, "c", now)
                .await
                .unwrap()
                .is_some()
        );
        erasing.release().await.unwrap();
    }

    #[tokio::test]
    async fn two_processes_racing_for_one_generation_get_one_lease() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(dir.path()).unwrap();
        let now = Utc::now();
        let (x, y) = tokio::join!(Lease::acquire(&store, "x", now), Lease::acquire(&store, "y", now));
        let held = [x.unwrap(), y.unwrap()].into_iter().flatten().count();
        assert_eq!(held, 1);
    }
}
