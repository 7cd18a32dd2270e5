//! `proxima sql`: run statements or a script and print the last result set.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use arrow::array::RecordBatch;
use clap::{ArgGroup, Args, ValueEnum};
use futures::StreamExt;
use proxima_engine::{SessionFactory, SessionOptions, Store, script};

use super::CliError;

/// Arguments of `proxima sql`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("input").required(true).args(["command", "file"])))]
pub struct SqlArgs {
    /// SQL to run: one or several statements separated by ';'.
    #[arg(short = 'c', long)]
    command: Option<String>,
    /// A SQL script to run (a tracer job).
    #[arg(short = 'f', long)]
    file: Option<PathBuf>,
    /// A script parameter: each ${name} in the SQL becomes 'value' (a quoted string literal).
    #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_param)]
    params: Vec<(String, String)>,
    /// How to print the result.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    /// An aligned table.
    Table,
    /// CSV with a header line.
    Csv,
    /// JSON, one object per line.
    Json,
}

fn parse_param(arg: &str) -> Result<(String, String), String> {
    let (name, value) = arg
        .split_once('=')
        .ok_or_else(|| format!("'{arg}' is not NAME=VALUE"))?;
    Ok((name.trim().to_string(), value.to_string()))
}

/// Runs `proxima sql`.
pub async fn run(store: Store, args: SqlArgs) -> Result<(), CliError> {
    // Errors name the script file they come from; `-c` needs no name.
    let (source, text) = match (&args.command, &args.file) {
        (Some(sql), _) => (String::new(), sql.clone()),
        (None, Some(file)) => (
            format!("{}: ", file.display()),
            std::fs::read_to_string(file)
                .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", file.display())))?,
        ),
        (None, None) => unreachable!("clap requires -c or -f"),
    };
    let params: BTreeMap<String, String> = args.params.into_iter().collect();
    let query_error = |e: datafusion::error::DataFusionError| CliError::Query(format!("{source}{e}"));
    let text = script::substitute(&text, &params).map_err(query_error)?;
    let statements = script::parse(&text).map_err(query_error)?;
    if statements.is_empty() {
        return Err(CliError::Usage(format!("{source}no SQL statement to run")));
    }

    let factory = SessionFactory::new(store, SessionOptions::default())?;
    let ctx = factory.session().await?;
    let count = statements.len();
    for (i, statement) in statements.into_iter().enumerate() {
        let statement_error = |e: datafusion::error::DataFusionError| {
            if count == 1 {
                CliError::Query(format!("{source}{e}"))
            } else {
                CliError::Query(format!("{source}statement {} of {count}: {e}", i + 1))
            }
        };
        let frame = script::execute(&ctx, statement).await.map_err(statement_error)?;
        if i + 1 < count {
            frame.collect().await.map_err(statement_error)?;
            continue;
        }
        let schema = frame.schema().inner().clone();
        let mut stream = frame.execute_stream().await.map_err(statement_error)?;
        if schema.fields().is_empty() {
            // DDL and SET: nothing to print.
            while let Some(batch) = stream.next().await {
                batch.map_err(statement_error)?;
            }
            return Ok(());
        }
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        match args.format {
            Format::Table => {
                let mut batches: Vec<RecordBatch> = Vec::new();
                while let Some(batch) = stream.next().await {
                    batches.push(batch.map_err(statement_error)?);
                }
                if batches.is_empty() {
                    batches.push(RecordBatch::new_empty(schema));
                }
                let table = arrow::util::pretty::pretty_format_batches(&batches)?;
                writeln!(out, "{table}")?;
            }
            Format::Csv => {
                let mut writer = arrow::csv::WriterBuilder::new().with_header(true).build(&mut out);
                let mut wrote_any = false;
                while let Some(batch) = stream.next().await {
                    writer.write(&batch.map_err(statement_error)?)?;
                    wrote_any = true;
                }
                if !wrote_any {
                    writer.write(&RecordBatch::new_empty(schema))?;
                }
            }
            Format::Json => {
                let mut writer = arrow::json::LineDelimitedWriter::new(&mut out);
                while let Some(batch) = stream.next().await {
                    writer.write(&batch.map_err(statement_error)?)?;
                }
                writer.finish()?;
            }
        }
        out.flush()?;
    }
    Ok(())
}
