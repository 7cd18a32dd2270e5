//! `proxima import`: validated, all-or-nothing imports of CSV and Parquet files.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use proxima_engine::{Store, Table};
use proxima_ingest::import::import;
use proxima_storage::PartitionWriter;

use super::CliError;

/// Arguments of `proxima import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The table to import into.
    table: ImportTable,
    /// CSV (with a header line) or Parquet files, recognised by their extension.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ImportTable {
    /// Bluetooth sightings: observer, observed, observed_at, duration_s, rssi, tx_power, location.
    Observations,
    /// Registered devices: device_uuid, mac, registered_at.
    Devices,
}

/// Runs `proxima import`.
pub async fn run(store: Store, args: ImportArgs) -> Result<(), CliError> {
    let table = match args.table {
        ImportTable::Observations => Table::Observations,
        ImportTable::Devices => Table::Devices,
    };
    let writer = PartitionWriter::new(store, "import");
    let summary = import(&writer, table, &args.files).await?;
    super::print(format!(
        "imported {} rows from {} file(s) into {table} ({} Parquet file(s), {} bytes)",
        summary.rows, summary.files, summary.written.files, summary.written.bytes
    ))?;
    Ok(())
}
