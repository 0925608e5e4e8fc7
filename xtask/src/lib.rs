//! The xtask library: the repository's own lint (`tidy`) and the benchmark report, shared
//! by the `xtask` binary and its tests.

pub mod report;
pub mod tidy;
pub mod wasm_size;

use std::path::{Path, PathBuf};

/// The workspace root (the folder above `xtask/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}
