//! Helpers shared by the integration tests that spawn the `cnclip` binary.

use std::process::{Command, Output};

use serde_json::Value;

/// Runs `cnclip` offline, with an empty model cache, so a zoo name can never download.
pub fn cnclip(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cnclip"))
        .args(args)
        .env("CNCLIP_OFFLINE", "1")
        .env(
            "CNCLIP_CACHE",
            std::env::temp_dir().join("cnclip-test-empty-cache"),
        )
        .output()
        .expect("spawn cnclip")
}

/// Asserts the run succeeded and parses each stdout line as JSON.
pub fn json_lines(out: &Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "cnclip failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
