//! Helpers shared by the integration tests that run the real `proxima serve`.

use std::io::{BufRead, BufReader};
use std::process::ChildStdout;

/// Reads a server's standard output up to the first line starting with `prefix` and returns
/// that line; fails if the server exits first.
pub fn wait_for_line(stdout: &mut BufReader<ChildStdout>, prefix: &str) -> String {
    let mut line = String::new();
    while !line.starts_with(prefix) {
        line.clear();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "serve exited before printing '{prefix}'"
        );
    }
    line
}
