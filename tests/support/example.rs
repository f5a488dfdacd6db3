//! The examples' binaries, which `cargo test` builds beside the tests (into
//! `target/<profile>/examples/`).

/// The binary of the example `name`.
pub(crate) fn example(name: &str) -> std::path::PathBuf {
    let deps = std::env::current_exe().unwrap();
    let profile = deps.parent().unwrap().parent().unwrap();
    let path = profile.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: `cargo test` builds the examples (or `cargo build --examples`)",
        path.display()
    );
    path
}
