//! Running the `turnflow` binary from a test: spawned, its first line read.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// `turnflow` with `args` and `env`, its errors to `stderr`: the child (stdout drained after
/// its first line, so it never blocks on it) and that first line.
pub(crate) fn spawn(args: &[&str], env: &[(&str, &str)], stderr: Stdio) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_turnflow"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut line).unwrap();
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    (child, line)
}

/// The first word of `line` that starts with `prefix`.
pub(crate) fn address(line: &str, prefix: &str) -> String {
    line.split_whitespace()
        .find(|w| w.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} address in {line:?}"))
        .trim_end_matches('/')
        .to_owned()
}
