//! Retention: old data ages out by deleting whole day folders.
//!
//! A day is kept when it is one of the last `keep_days` days up to and
//! including `today` (so `keep_days = 1` keeps only today). Deleting a day is
//! a deletion of its folder's objects; no file outside an expired day folder
//! is touched, so running queries over kept days are unaffected.

use chrono::{Days, NaiveDate};
use tracing::{debug, info};

use proxima_engine::{DayPartition, Store, Table};

use crate::error::Result;

/// One day folder removed by retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredDay {
    /// The partition that was deleted.
    pub partition: DayPartition,
    /// Number of files deleted.
    pub files: usize,
    /// Bytes deleted.
    pub bytes: u64,
}

/// The oldest day kept when keeping `keep_days` days up to `today`.
pub fn oldest_kept_day(today: NaiveDate, keep_days: u32) -> NaiveDate {
    today
        .checked_sub_days(Days::new(u64::from(keep_days.saturating_sub(1))))
        .unwrap_or(NaiveDate::MIN)
}

/// Deletes every day folder of every day-partitioned table older than the last `keep_days` days.
pub async fn apply(store: &Store, today: NaiveDate, keep_days: u32) -> Result<Vec<ExpiredDay>> {
    let mut expired = Vec::new();
    for table in Table::ALL.into_iter().filter(|t| t.is_day_partitioned()) {
        expired.extend(apply_table(store, table, today, keep_days).await?);
    }
    Ok(expired)
}

/// Deletes the day folders of one table older than the last `keep_days` days, and their
/// key-encryption keys.
pub async fn apply_table(store: &Store, table: Table, today: NaiveDate, keep_days: u32) -> Result<Vec<ExpiredDay>> {
    let oldest = oldest_kept_day(today, keep_days);
    let mut expired = Vec::new();
    for partition in store.list_days(table).await? {
        if partition.day >= oldest {
            continue;
        }
        debug!(table = %table, day = %partition.day, "retention deleting day folder");
        let (files, bytes) = store.delete_prefix(&partition.prefix(store.root())).await?;
        info!(table = %table, day = %partition.day, files, bytes, "retention deleted day folder");
        expired.push(ExpiredDay {
            partition,
            files,
            bytes,
        });
    }
    // The keys of the expired days go too: no copy of their files can be read any more.
    let keys = crate::keys::forget_keks_before(store, table, oldest).await?;
    if keys > 0 {
        info!(table = %table, keys, "retention deleted the key-encryption keys of expired days");
    }
    Ok(expired)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_days_counts_today() {
        let today = NaiveDate::from_ymd_opt(2026, 11, 30).unwrap();
        assert_eq!(oldest_kept_day(today, 1), today);
        assert_eq!(
            oldest_kept_day(today, 21),
            NaiveDate::from_ymd_opt(2026, 11, 10).unwrap()
        );
        assert_eq!(oldest_kept_day(today, 0), today);
    }
}
