//! `proxima`: the command line of the Proxima contact-tracing platform.
//!
//! Thin by design: clap parses the flags into plain values and each
//! subcommand in [`cli`] calls into the library crates.

mod cli;

use std::process::ExitCode;

// PERF: glibc's malloc was a fifth of the REST server's CPU under upload load (many small
// allocations from many threads); mimalloc is faster and does not contend.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("warn,proxima::query=info,proxima::auth=info,proxima::serve=info,proxima::request=info")
    });
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        cli::LogFormat::Text => logs.init(),
        cli::LogFormat::Json => logs.json().with_current_span(true).with_span_list(false).init(),
    }
    // 16 MiB a worker thread, not tokio's 2 MiB: decoding and planning a deep plan recurse
    // as deep as the plan (a Ballista scheduler given a tracer's scoped `encounters` view
    // overflowed 2 MiB and died).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .thread_stack_size(16 << 20)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output went away (`proxima sql … | head`): not an error.
        Err(cli::CliError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
