//! Helpers shared by the integration tests of `rfb-core`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The project's Python (the virtual environment the set-up script makes), or `RFB_PYTHON`.
pub fn python() -> PathBuf {
    if let Ok(path) = std::env::var("RFB_PYTHON") {
        return PathBuf::from(path);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        venv.exists(),
        "no Python environment at {}: run scripts/setup-env.sh (the README's test command does)",
        venv.display()
    );
    venv
}

/// Runs one of the scripts in `tests/python` and returns its standard output.
pub fn run_python_script(script: &str, args: &[String]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python").join(script);
    let output = Command::new(python()).arg(&path).args(args).output().expect("cannot start python");
    assert!(
        output.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
