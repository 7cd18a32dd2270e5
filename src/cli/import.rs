//! `proxima import`: validated, all-or-nothing imports of CSV and Parquet files.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use proxima_engine::{SessionFactory, SessionOptions, Store, Table};
use proxima_ingest::import::import_rolled_up;
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
    /// Rotating identifiers: the keys that resolve them when the import's days are rolled
    /// up for analysts (default: the store's, or the development key beside it).
    #[command(flatten)]
    identifiers: super::id_key::IdentifierArgs,
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
    let factory = SessionFactory::new(
        store.clone(),
        SessionOptions {
            identifiers: args.identifiers.for_sql(&store).await?,
            ..SessionOptions::default()
        },
    )?;
    let writer = PartitionWriter::new(store, "import");
    let summary = import_rolled_up(&factory, &writer, table, &args.files).await?;
    super::print(format!(
        "imported {} rows from {} file(s) into {table} ({} Parquet file(s), {} bytes)",
        summary.rows, summary.files, summary.written.files, summary.written.bytes
    ))?;
    Ok(())
}
