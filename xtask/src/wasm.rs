//! `cargo xtask wasm`: conc-core and conc-retry on `wasm32-unknown-unknown`, their
//! WebAssembly tests (`tests/*_wasm.rs`, wasm-bindgen-test) run in Node and in headless
//! Chromium (through chromedriver). The target comes from rustup; the test runner is
//! `wasm-bindgen-cli` at the version of `wasm-bindgen` in the lock file, installed once
//! with `cargo install` when it is missing. A machine without them (no rustup download,
//! no registry) prints a `skipped:` line naming what is missing.

use std::path::PathBuf;
use std::process::Command;

use crate::{Result, cargo, run};

const TARGET: &str = "wasm32-unknown-unknown";

/// The crates and their WebAssembly test targets.
const TESTS: &[(&str, &str)] = &[("conc-core", "core_wasm"), ("conc-retry", "retry_wasm")];

pub(crate) fn wasm() -> Result {
    if !target_installed() {
        let added = Command::new("rustup")
            .args(["target", "add", TARGET])
            .status()
            .is_ok_and(|s| s.success());
        if !added {
            println!(
                "skipped: the {TARGET} target is not installed and rustup could not add it, so the WebAssembly tests do not run"
            );
            return Ok(());
        }
    }
    let Some(runner) = runner()? else {
        return Ok(());
    };
    for (krate, _) in TESTS {
        run(
            &format!("wasm-build {krate}"),
            cargo().args(["build", "-p", krate, "--target", TARGET]),
        )?;
    }
    let chromedriver = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    for (krate, test) in TESTS {
        let mut node = cargo();
        node.args(["test", "-p", krate, "--target", TARGET, "--test", test])
            .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER", &runner);
        run(&format!("wasm-node {krate}"), &mut node)?;
        match &chromedriver {
            Some(driver) => {
                let mut browser = cargo();
                browser
                    .args(["test", "-p", krate, "--target", TARGET, "--test", test])
                    .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER", &runner)
                    .env("WASM_BINDGEN_USE_BROWSER", "1")
                    .env("CHROMEDRIVER", driver);
                run(&format!("wasm-chromium {krate}"), &mut browser)?;
            }
            None => println!(
                "skipped: chromedriver is not installed, so {krate}'s WebAssembly tests do not run in Chromium"
            ),
        }
    }
    Ok(())
}

fn target_installed() -> bool {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == TARGET)
        })
}

/// `wasm-bindgen-test-runner` at the lock file's `wasm-bindgen` version, installed into
/// `~/.cargo/bin` (cargo's own root) when it is missing or another version.
fn runner() -> Result<Option<PathBuf>> {
    let lock = std::fs::read_to_string("Cargo.lock").map_err(|e| format!("Cargo.lock: {e}"))?;
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"wasm-bindgen\"\n"))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")))
        .map(|v| v.trim_end_matches('"').to_owned())
        .ok_or("Cargo.lock names no wasm-bindgen")?;
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .ok_or("neither CARGO_HOME nor HOME is set")?;
    let runner = home.join("bin").join("wasm-bindgen-test-runner");
    let has = |runner: &PathBuf| {
        Command::new(runner)
            .arg("--version")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&version))
    };
    if has(&runner) {
        return Ok(Some(runner));
    }
    let installed = run(
        "wasm-bindgen-cli",
        cargo().args(["install", "wasm-bindgen-cli", "--version", &version]),
    );
    if let Err(e) = installed {
        println!(
            "skipped: wasm-bindgen-cli {version} could not be installed ({e}), so the WebAssembly tests do not run"
        );
        return Ok(None);
    }
    Ok(Some(runner))
}
