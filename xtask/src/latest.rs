//! `cargo xtask latest`: the workspace against the newest versions its manifests allow, as
//! a user's fresh `cargo add` resolves them, not only as the lock file pins them. A copy of
//! the working tree (tracked and untracked files, not ignored ones) gets `cargo update` and
//! then clippy with `-D warnings` on every target and feature, in its own target folder: a
//! dependency's new deprecation or a semver-compatible break fails here, while the tree's
//! own lock file is left as it is.

use std::path::Path;
use std::process::Command;

use crate::{Result, cargo, run, target_dir};

pub(crate) fn latest() -> Result {
    let base = target_dir()?.join("latest");
    let tree = base.join("tree");
    if tree.exists() {
        std::fs::remove_dir_all(&tree)
            .map_err(|e| format!("cannot clear {}: {e}", tree.display()))?;
    }
    let listed = Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .output()
        .map_err(|e| format!("git ls-files could not start: {e}"))?;
    if !listed.status.success() {
        return Err(format!("git ls-files failed ({})", listed.status));
    }
    let mut copied = 0usize;
    for name in listed.stdout.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = std::str::from_utf8(name).map_err(|e| format!("a file name: {e}"))?;
        let from = Path::new(name);
        if !from.is_file() {
            // Deleted in the working tree, not yet in the index.
            continue;
        }
        let to = tree.join(name);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::copy(from, &to).map_err(|e| format!("cannot copy {name}: {e}"))?;
        copied += 1;
    }
    eprintln!("xtask latest: {copied} files copied to {}", tree.display());
    let target = base.join("target");
    // Without the registry (an offline machine) there is nothing newer to try.
    if let Err(e) = run("latest-update", cargo().arg("update").current_dir(&tree)) {
        println!("skipped: the newest compatible versions are not tried: {e}");
        return Ok(());
    }
    run(
        "latest-clippy",
        cargo()
            .args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--all-features",
                "--locked",
            ])
            .args(["--", "-D", "warnings"])
            .current_dir(&tree)
            .env("CARGO_TARGET_DIR", &target),
    )
}
