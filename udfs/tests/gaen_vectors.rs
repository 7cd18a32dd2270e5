//! The GAEN functions against the test vectors published with Google's
//! exposure-notification reference code (v1.2): one TEK, its RPIK and all 144 RPIs.

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::prelude::SessionContext;

const VECTORS: &str = include_str!("data/gaen_test_vectors.tsv");

struct Vectors {
    tek: String,
    rpik: String,
    /// (ENIntervalNumber, RPI)
    rpis: Vec<(i64, String)>,
}

fn vectors() -> Vectors {
    let header = VECTORS.lines().find(|l| l.starts_with("# TEK=")).expect("a TEK line");
    let field = |name: &str| {
        header
            .split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .expect("field present")
            .to_string()
    };
    let rpis = VECTORS
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("index"))
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            (cols[1].parse().expect("an interval number"), cols[3].to_string())
        })
        .collect();
    Vectors {
        tek: field("TEK="),
        rpik: field("RPIK="),
        rpis,
    }
}

async fn query(sql: &str) -> Vec<RecordBatch> {
    let ctx = SessionContext::new();
    proxima_udfs::register_all(&ctx).unwrap();
    ctx.sql(sql).await.unwrap().collect().await.unwrap()
}

fn strings(batches: &[RecordBatch], column: usize) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| {
            b.column(column)
                .as_string::<i32>()
                .iter()
                .map(|v| v.unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test]
async fn rpik_matches() {
    let v = vectors();
    let batches = query(&format!("SELECT en_rpik('{}')", v.tek)).await;
    assert_eq!(strings(&batches, 0), std::slice::from_ref(&v.rpik));
    // Upper-case keys are accepted too.
    let batches = query(&format!("SELECT en_rpik('{}')", v.tek.to_uppercase())).await;
    assert_eq!(strings(&batches, 0), [v.rpik]);
}

#[tokio::test]
async fn every_rpi_matches() {
    let v = vectors();
    assert_eq!(v.rpis.len(), 144);
    let values: Vec<String> = v.rpis.iter().map(|(n, _)| format!("({n})")).collect();
    let sql = format!(
        "SELECT n, en_rpi('{}', n) FROM (VALUES {}) AS t(n) ORDER BY n",
        v.tek,
        values.join(", ")
    );
    let batches = query(&sql).await;
    let expected: Vec<String> = v.rpis.iter().map(|(_, rpi)| rpi.clone()).collect();
    assert_eq!(strings(&batches, 1), expected);
}

#[tokio::test]
async fn en_rpis_yields_the_whole_key_period() {
    let v = vectors();
    let start = v.rpis[0].0;
    let batches = query(&format!(
        "SELECT interval_number, rpi, valid_from, valid_until FROM en_rpis('{}', {start}) ORDER BY interval_number",
        v.tek
    ))
    .await;
    let numbers: Vec<i64> = batches
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .collect();
    assert_eq!(numbers, v.rpis.iter().map(|(n, _)| *n).collect::<Vec<_>>());
    assert_eq!(
        strings(&batches, 1),
        v.rpis.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>()
    );

    // A shorter rolling period.
    let batches = query(&format!("SELECT count(*) FROM en_rpis('{}', {start}, 10)", v.tek)).await;
    assert_eq!(batches[0].column(0).as_primitive::<Int64Type>().value(0), 10);
}
