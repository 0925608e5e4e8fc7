//! `tidy`: lints the repository itself, as rust-analyzer's tidy test does.
//!
//! It fails on:
//! - a `.rs` file that does not open with a `//!` module doc;
//! - an unbounded channel constructor in library code;
//! - a leftover `todo!`, `unimplemented!` or `dbg!`;
//! - an `#[ignore]` without a reason;
//! - a workspace crate without a README.md;
//! - a `pub async fn` in library code whose doc comment has no `# Cancel safety` section;
//! - a doc comment in library code that cites the source documents ("seed 00N") instead of
//!   saying what the behaviour is and why.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

/// One finding: a file, a line (0 when the whole file) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file, relative to the workspace root.
    pub path: PathBuf,
    /// The 1-based line, or 0 for the whole file.
    pub line: usize,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.path.display(), self.message)
        } else {
            write!(f, "{}:{}: {}", self.path.display(), self.line, self.message)
        }
    }
}

/// Folders that hold workspace crates, each of whose children is a crate.
const CRATE_PARENTS: &[&str] = &["crates", "examples"];
/// Single-crate folders at the root.
const ROOT_CRATES: &[&str] = &["xtask", "benches"];

/// Runs every check over the workspace at `root`.
pub fn check(root: &Path) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut files = Vec::new();
    for dir in CRATE_PARENTS.iter().chain(ROOT_CRATES) {
        collect_rs(&root.join(dir), &mut files);
    }
    files.sort();
    for file in &files {
        let Ok(text) = fs::read_to_string(file) else {
            continue;
        };
        let rel = file.strip_prefix(root).unwrap_or(file).to_path_buf();
        check_file(&rel, &text, &mut problems);
    }
    for krate in crates(root) {
        if !krate.join("README.md").is_file() {
            problems.push(Problem {
                path: krate.strip_prefix(root).unwrap_or(&krate).to_path_buf(),
                line: 0,
                message: "crate has no README.md: add one saying what it is for".into(),
            });
        }
    }
    problems
}

/// The checks of one file's text.
pub fn check_file(rel: &Path, text: &str, problems: &mut Vec<Problem>) {
    let mut push = |line: usize, message: String| {
        problems.push(Problem {
            path: rel.to_path_buf(),
            line,
            message,
        })
    };
    if !text.trim_start().starts_with("//!") {
        push(
            0,
            "file does not open with a `//!` doc comment saying what it holds".into(),
        );
    }
    let library = is_library_code(rel);
    // Spelled in pieces so that this file does not trip its own check.
    let leftovers = [
        concat!("to", "do!("),
        concat!("unimple", "mented!("),
        concat!("db", "g!("),
    ];
    let unbounded = [
        concat!("unbounded", "_channel("),
        concat!("crossbeam_channel::", "unbounded("),
        concat!("mpsc::", "channel()"),
    ];
    let ignore = concat!("#[", "ignore");
    let cancel_safety = concat!("# Cancel", " safety");
    let lines: Vec<&str> = text.lines().collect();
    let jargon = concat!("seed ", "0");
    if library {
        for (index, line) in lines.iter().enumerate() {
            let code = line.trim_start();
            if (code.starts_with("///") || code.starts_with("//!")) && code.contains(jargon) {
                push(
                    index + 1,
                    "a public doc cites a source document (\"seed 00N\"): say what the behaviour is and why".into(),
                );
            }
        }
    }
    for (index, line) in text.lines().enumerate() {
        let code = line.trim_start();
        if code.starts_with("//") && !code.starts_with("///") {
            continue;
        }
        let n = index + 1;
        for pattern in leftovers {
            if line.contains(pattern) {
                push(
                    n,
                    format!(
                        "leftover `{}`: finish or remove it",
                        pattern.trim_end_matches('(')
                    ),
                );
            }
        }
        if library && !code.starts_with("///") {
            for pattern in unbounded {
                if line.contains(pattern) {
                    push(
                        n,
                        format!(
                            "unbounded channel `{pattern}` in library code: use a bounded channel"
                        ),
                    );
                }
            }
        }
        if library && code.starts_with(concat!("pub async", " fn ")) {
            let doc = lines[..index]
                .iter()
                .rev()
                .take_while(|l| {
                    let l = l.trim_start();
                    l.starts_with("///") || l.starts_with("#[")
                })
                .any(|l| l.contains(cancel_safety));
            if !doc {
                push(n, "public async fn without a `# Cancel safety` section in its docs (seed 001, 2.2)".into());
            }
        }
        if let Some(rest) = code.strip_prefix(ignore)
            && !rest.trim_start().starts_with('=')
        {
            push(n, "`#[ignore]` without a reason: write `#[ignore = \"why\"]`, or better, fix the test".into());
        }
    }
}

/// Library code: `crates/*/src/**` outside test modules' own folders.
fn is_library_code(rel: &Path) -> bool {
    let parts: Vec<_> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    parts.first().is_some_and(|p| p == "crates")
        && parts.get(2).is_some_and(|p| p == "src")
        && !parts.iter().any(|p| p == "tests")
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name == "node_modules" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            collect_rs(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every workspace crate's folder.
pub fn crates(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for parent in CRATE_PARENTS {
        if let Ok(entries) = fs::read_dir(root.join(parent)) {
            for entry in entries.flatten() {
                if entry.path().join("Cargo.toml").is_file() {
                    found.push(entry.path());
                }
            }
        }
    }
    for dir in ROOT_CRATES {
        if root.join(dir).join("Cargo.toml").is_file() {
            found.push(root.join(dir));
        }
    }
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(path: &str, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        check_file(Path::new(path), text, &mut out);
        out.into_iter().map(|p| p.message).collect()
    }

    #[test]
    fn flags_each_kind_of_problem() {
        assert!(problems("crates/a/src/lib.rs", "fn main() {}")[0].contains("`//!`"));
        let leftover = format!("//! x\nfn f() {{ {}) }}", concat!("to", "do!("));
        assert!(problems("crates/a/src/lib.rs", &leftover)[0].contains("leftover"));
        let channel = format!(
            "//! x\nlet (tx, rx) = tokio::sync::mpsc::{});",
            concat!("unbounded", "_channel(")
        );
        assert!(problems("crates/a/src/lib.rs", &channel)[0].contains("unbounded"));
        assert!(
            problems("crates/a/tests/t.rs", &channel).is_empty(),
            "tests may use one"
        );
        let ignored = format!("//! x\n{}]\nfn t() {{}}", concat!("#[", "ignore"));
        assert!(problems("crates/a/tests/t.rs", &ignored)[0].contains("reason"));
        let reasoned = format!(
            "//! x\n{} = \"needs a GPU\"]\nfn t() {{}}",
            concat!("#[", "ignore")
        );
        assert!(problems("crates/a/tests/t.rs", &reasoned).is_empty());
        assert!(problems("crates/a/src/lib.rs", "//! fine\n").is_empty());
        let undocumented = format!(
            "//! x\n/// Does it.\n{} go() {{}}",
            concat!("pub async", " fn")
        );
        assert!(problems("crates/a/src/lib.rs", &undocumented)[0].contains("Cancel safety"));
        let documented = format!(
            "//! x\n/// Does it.\n///\n/// # Cancel{} safety\n///\n/// Safe.\n{} go() {{}}",
            "",
            concat!("pub async", " fn")
        );
        assert!(problems("crates/a/src/lib.rs", &documented).is_empty());
        let jargon = format!("//! The lock {}03.\n", concat!("(seed ", "0"));
        assert!(problems("crates/a/src/lib.rs", &jargon)[0].contains("source document"));
        assert!(problems("crates/a/tests/t.rs", &jargon).is_empty());
    }
}
