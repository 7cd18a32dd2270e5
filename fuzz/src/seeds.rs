//! The committed corpus's first inputs: one or a few valid examples per target, made by
//! the code that makes the real thing (an Arrow IPC stream, a Parquet file, a sealed WAL
//! segment), so that the fuzzer starts deep in each parser. `cargo test --manifest-path
//! fuzz/Cargo.toml -- --ignored write_seeds` writes them under `fuzz/corpus/<target>/`.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};

/// The MAC of the phone the REST target registers (uploads name it or others).
pub const PHONE_MAC: &str = "02:00:00:00:00:01";

/// Another MAC phones hear.
pub const OTHER_MAC: &str = "02:00:00:00:00:02";

/// The JSON upload of a phone: sightings of other devices.
fn upload_json() -> Vec<u8> {
    serde_json::json!([
        {"observed": OTHER_MAC, "observed_at": super::NOW, "duration_s": 30, "rssi": -60, "tx_power": -10},
        {"observed": "0123456789abcdef0123456789abcdef", "observed_at": "2026-12-01T11:59:00+00:00", "duration_s": 5},
    ])
    .to_string()
    .into_bytes()
}

/// A gateway's NDJSON line naming a device by UUID (any: unknown observers are refused).
fn bulk_ndjson() -> Vec<u8> {
    format!(
        "{}\n{}\n",
        serde_json::json!({"observer": "018f0000-0000-7000-8000-000000000001", "observed": OTHER_MAC, "observed_at": super::NOW, "duration_s": 30}),
        serde_json::json!({"observer": "018f0000-0000-7000-8000-000000000002", "observed": PHONE_MAC, "observed_at": super::NOW, "duration_s": 3, "rssi": -70}),
    )
    .into_bytes()
}

/// Two sightings as a gateway sends them (and as a Parquet file of observations holds them).
fn sightings() -> RecordBatch {
    let at = super::now().timestamp_micros();
    let batch = RecordBatch::try_from_iter(vec![
        (
            "observer",
            Arc::new(StringArray::from(vec!["018f0000-0000-7000-8000-000000000001"; 2])) as _,
        ),
        ("observed", Arc::new(StringArray::from(vec![OTHER_MAC, PHONE_MAC])) as _),
        (
            "observed_at",
            Arc::new(TimestampMicrosecondArray::from(vec![at, at]).with_timezone("UTC")) as _,
        ),
        ("duration_s", Arc::new(Int64Array::from(vec![30, 3])) as _),
    ])
    .expect("a batch");
    batch
}

/// The same rows as an Arrow IPC stream.
fn bulk_arrow() -> Vec<u8> {
    ipc_stream(&sightings())
}

/// A batch of two rows bound to `$1`, as ADBC sends a prepared statement's parameters.
fn parameters_arrow() -> Vec<u8> {
    ipc_stream(
        &arrow::array::RecordBatch::try_from_iter([(
            "$1",
            std::sync::Arc::new(arrow::array::Int64Array::from(vec![60, 900])) as arrow::array::ArrayRef,
        )])
        .expect("a batch"),
    )
}

/// `batch` as an Arrow IPC stream of one batch.
fn ipc_stream(batch: &arrow::array::RecordBatch) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut bytes, &batch.schema()).expect("a writer");
    writer.write(batch).expect("written");
    writer.finish().expect("finished");
    drop(writer);
    bytes
}

/// The golden tests' fixtures: real CSV files of every kind the import takes.
fn csv_files() -> Vec<(String, Vec<u8>)> {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sql/fixtures");
    ["observations.csv", "devices.csv", "cases.csv"]
        .into_iter()
        .map(|name| {
            let bytes = std::fs::read(fixtures.join(name)).expect("a fixture");
            // The first byte chooses the table (see the target).
            let table = match name {
                "observations.csv" => 0u8,
                "devices.csv" => 1,
                _ => 2,
            };
            let mut input = vec![table];
            input.extend_from_slice(&bytes);
            (name.to_string(), input)
        })
        .collect()
}

/// A Parquet file of observations as the import reads them.
fn parquet_file() -> Vec<u8> {
    let batch = sightings();
    let mut bytes = Vec::new();
    let mut writer = parquet::arrow::ArrowWriter::try_new(&mut bytes, batch.schema(), None).expect("a writer");
    writer.write(&batch).expect("written");
    writer.close().expect("closed");
    bytes
}

/// WAL segments as a server writes them: one in the clear, one sealed with
/// [`super::master_keys`], each holding two records of uploaded rows.
async fn wal_segments() -> Vec<(String, Vec<u8>)> {
    use proxima_engine::Table;
    use proxima_storage::wal::{Entry, Wal, WalStats};
    let at = super::now().timestamp_micros();
    let rows = || {
        let batch = RecordBatch::try_new(
            proxima_engine::schema::REVOCATIONS.clone(),
            vec![
                Arc::new(StringArray::from(vec!["018f0000-0000-7000-8000-000000000001"])),
                Arc::new(TimestampMicrosecondArray::from(vec![at]).with_timezone("UTC")),
            ],
        )
        .expect("a batch");
        vec![Entry {
            table: Table::Revocations,
            batch,
        }]
    };
    let mut segments = Vec::new();
    for sealed in [false, true] {
        let dir = super::scratch();
        let nothing_committed = |_, _, _| async { Ok(0) };
        let (wal, _) = if sealed {
            let keys: Arc<dyn proxima_engine::keys::KeyProvider> = Arc::new(super::master_keys());
            Wal::open_sealed(dir.path(), keys, WalStats::default(), nothing_committed)
                .await
                .expect("a WAL")
        } else {
            Wal::open(dir.path(), WalStats::default(), nothing_committed)
                .await
                .expect("a WAL")
        };
        wal.append(rows()).await.expect("appended");
        wal.append(rows()).await.expect("appended");
        drop(wal);
        for item in std::fs::read_dir(dir.path()).expect("the WAL folder") {
            let path = item.expect("an entry").path();
            if path.extension().is_some_and(|e| e == "wal") {
                let name = if sealed { "sealed.wal" } else { "plain.wal" };
                segments.push((name.to_string(), std::fs::read(&path).expect("a segment")));
            }
        }
    }
    segments
}

/// Writes every target's seeds under `corpus`.
pub fn write_all(corpus: &Path) {
    let mut seeds: Vec<(&str, String, Vec<u8>)> = vec![
        ("rest_observations", "upload.json".into(), upload_json()),
        ("rest_bulk_ndjson", "bulk.ndjson".into(), bulk_ndjson()),
        ("rest_bulk_arrow", "bulk.arrows".into(), bulk_arrow()),
        ("flight_parameters", "parameters.arrows".into(), parameters_arrow()),
        ("import_parquet", "observations.parquet".into(), parquet_file()),
        (
            "identifiers",
            "ids.txt".into(),
            format!(
                "018f0000-0000-7000-8000-000000000001\n{PHONE_MAC}\n0123456789abcdef0123456789abcdef\nu4pruyd\n"
            )
            .into_bytes(),
        ),
        (
            "script_params",
            "job.txt".into(),
            b"day=2026-12-01\ncase=018f0000-0000-7000-8000-000000000001\n---\nSELECT count(*) FROM observations WHERE day = '${day}';\nSELECT '${case}' AS c;\n".to_vec(),
        ),
    ];
    for (name, bytes) in csv_files() {
        seeds.push(("import_csv", name, bytes));
    }
    for (name, bytes) in super::runtime().block_on(wal_segments()) {
        seeds.push(("wal_replay", name, bytes));
    }
    for (name, bytes) in flight_commands() {
        seeds.push(("flight_commands", name, bytes));
    }
    for (target, name, bytes) in seeds {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir).expect("a corpus folder");
        std::fs::write(dir.join(name), bytes).expect("a seed");
    }
}

/// Flight SQL commands and tickets as clients send them.
fn flight_commands() -> Vec<(String, Vec<u8>)> {
    use arrow_flight::sql::{
        CommandGetTables, CommandPreparedStatementQuery, CommandStatementQuery, ProstMessageExt, TicketStatementQuery,
    };
    use prost::Message as _;
    vec![
        (
            "statement".into(),
            CommandStatementQuery {
                query: "SELECT 1".into(),
                transaction_id: None,
            }
            .as_any()
            .encode_to_vec(),
        ),
        (
            "ticket".into(),
            TicketStatementQuery {
                statement_handle: vec![1; 16].into(),
            }
            .as_any()
            .encode_to_vec(),
        ),
        (
            "prepared".into(),
            CommandPreparedStatementQuery {
                prepared_statement_handle: b"no such handle".to_vec().into(),
            }
            .as_any()
            .encode_to_vec(),
        ),
        (
            "tables".into(),
            CommandGetTables {
                catalog: None,
                db_schema_filter_pattern: Some("%".into()),
                table_name_filter_pattern: None,
                table_types: vec![],
                include_schema: true,
            }
            .as_any()
            .encode_to_vec(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    #[test]
    #[ignore = "writes the committed corpus: run by hand"]
    fn write_seeds() {
        super::write_all(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    }
}
