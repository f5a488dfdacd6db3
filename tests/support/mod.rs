//! Helpers shared by the tests that run the `turnflow` binary.

mod process;

use std::process::{Child, Stdio};

use process::{address, spawn};

/// `turnflow serve` on a free port with `args`: the child (stderr piped) and the http:// URL
/// it printed.
pub(crate) fn spawn_server(args: &[&str]) -> (Child, String) {
    let args: Vec<&str> = ["serve", "--listen", "127.0.0.1:0"]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    let (child, line) = spawn(&args, &[], Stdio::piped());
    (child, address(&line, "http://"))
}
