//! `tidy`: lints the repository itself, as rust-analyzer's tidy test does.
//!
//! It fails on:
//! - a `.rs` file that does not open with a `//!` module doc;
//! - an unbounded channel constructor in library code;
//! - a leftover `todo!`, `unimplemented!` or `dbg!`;
//! - an `#[ignore]` without a reason;
//! - a workspace crate without a README.md;
//! - a `pub async fn` in library code whose doc comment has no `# Cancel safety` section;
//! - a doc comment in library code that cites the source documents ("seed 00N", "seed
//!   rule", "(001, 2.3)") instead of saying what the behaviour is and why;
//! - an import that runs up the layers: a library file that imports the crate root (only
//!   modules are imported, by their own paths), or a room that imports what its rules
//!   forbid ([`IMPORT_RULES`]: a backend never imports a recipe or another backend, a recipe
//!   never imports a backend, the vocabulary imports neither).

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
        check_imports(root, &krate, &mut problems);
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
    let jargon = [concat!("seed ", "0"), concat!("seed ", "rule")];
    if library {
        for (index, line) in lines.iter().enumerate() {
            let code = line.trim_start();
            if (code.starts_with("///") || code.starts_with("//!"))
                && (jargon.iter().any(|j| code.contains(j)) || cites_a_section(code))
            {
                push(
                    index + 1,
                    "a public doc cites a source document (\"seed 00N\", \"(001, 2.3)\"): say what the behaviour is and why".into(),
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
                push(n, "public async fn without a `# Cancel safety` section in its docs: say what a dropped call leaves behind".into());
            }
        }
        if let Some(rest) = code.strip_prefix(ignore)
            && !rest.trim_start().starts_with('=')
        {
            push(n, "`#[ignore]` without a reason: write `#[ignore = \"why\"]`, or better, fix the test".into());
        }
    }
}

/// Whether a doc line cites a source document by number, as in `(001, 2.3)` or `(004)`.
fn cites_a_section(line: &str) -> bool {
    line.match_indices("(00").any(|(at, _)| {
        let rest = &line[at + 3..];
        let mut chars = rest.chars();
        chars.next().is_some_and(|c| c.is_ascii_digit()) && matches!(chars.next(), Some(',' | ')'))
    })
}

/// What one room of a crate's `src/` may not import.
#[derive(Debug)]
pub struct ImportRule {
    /// The crate's folder, such as `crates/conc-lock-store`.
    pub krate: &'static str,
    /// The room: a path under `src/`, a folder ending in `/` or a file.
    pub room: &'static str,
    /// Paths the room may not name, such as `crate::recipe`.
    pub forbidden: &'static [&'static str],
    /// Why, for the message.
    pub why: &'static str,
}

/// The layers, room by room: imports only run down.
pub const IMPORT_RULES: &[ImportRule] = &[
    // conc-lock-store: the vocabulary (the trait, leases, requests, errors, watches) and
    // the helpers below it import neither backends nor recipes.
    ImportRule {
        krate: "crates/conc-lock-store",
        room: "store.rs",
        forbidden: &[
            "crate::backend",
            "crate::recipe",
            "crate::testing",
            "crate::url",
        ],
        why: "the trait is the vocabulary every room imports",
    },
    ImportRule {
        krate: "crates/conc-lock-store",
        room: "lease.rs",
        forbidden: &[
            "crate::backend",
            "crate::recipe",
            "crate::testing",
            "crate::url",
        ],
        why: "leases are vocabulary",
    },
    ImportRule {
        krate: "crates/conc-lock-store",
        room: "request.rs",
        forbidden: &[
            "crate::backend",
            "crate::recipe",
            "crate::testing",
            "crate::url",
        ],
        why: "requests are vocabulary",
    },
    ImportRule {
        krate: "crates/conc-lock-store",
        room: "error.rs",
        forbidden: &[
            "crate::backend",
            "crate::recipe",
            "crate::testing",
            "crate::url",
        ],
        why: "errors are vocabulary",
    },
    ImportRule {
        krate: "crates/conc-lock-store",
        room: "notify.rs",
        forbidden: &[
            "crate::backend",
            "crate::recipe",
            "crate::testing",
            "crate::url",
        ],
        why: "watches are vocabulary",
    },
    ImportRule {
        krate: "crates/conc-lock-store",
        room: "util/",
        forbidden: &[
            "crate::backend",
            "crate::recipe",
            "crate::testing",
            "crate::url",
        ],
        why: "helpers sit below every room",
    },
    ImportRule {
        krate: "crates/conc-lock-store",
        room: "backend/",
        forbidden: &["crate::recipe", "crate::testing::conformance", "crate::url"],
        why: "a backend imports the vocabulary and the trait, never a recipe",
    },
    ImportRule {
        krate: "crates/conc-lock-store",
        room: "recipe/",
        forbidden: &["crate::backend", "crate::testing", "crate::url"],
        why: "a recipe is built on the trait, so it works on every backend",
    },
    // conc-session: the session stores never reach up into the manager.
    ImportRule {
        krate: "crates/conc-session",
        room: "store/",
        forbidden: &["crate::manager"],
        why: "the stores sit below the manager that uses them",
    },
    ImportRule {
        krate: "crates/conc-session",
        room: "data.rs",
        forbidden: &["crate::manager", "crate::store"],
        why: "session data is vocabulary",
    },
    ImportRule {
        krate: "crates/conc-session",
        room: "error.rs",
        forbidden: &["crate::manager", "crate::store"],
        why: "errors are vocabulary",
    },
    // conc-retry: the breaker and the budget stand alone; retry uses them; tower wraps all.
    ImportRule {
        krate: "crates/conc-retry",
        room: "breaker/",
        forbidden: &["crate::retry", "crate::tower", "crate::budget"],
        why: "the breaker stands alone: retry and the tower layers use it, not the reverse",
    },
    ImportRule {
        krate: "crates/conc-retry",
        room: "budget.rs",
        forbidden: &["crate::retry", "crate::tower", "crate::breaker"],
        why: "the budget stands alone",
    },
    ImportRule {
        krate: "crates/conc-retry",
        room: "retry.rs",
        forbidden: &["crate::tower"],
        why: "the tower layers wrap retry, not the reverse",
    },
];

/// Folders whose children are alternatives (backends): a child never imports a sibling,
/// except the shared rooms named.
const SIBLING_FOLDERS: &[(&str, &str, &[&str])] = &[
    ("crates/conc-lock-store", "backend", &["metadata", "tls"]),
    ("crates/conc-session", "store", &[]),
];

/// The import checks of one crate: no import of the crate root from library files, and
/// the rooms' rules.
fn check_imports(root: &Path, krate: &Path, problems: &mut Vec<Problem>) {
    let src = krate.join("src");
    let lib = src.join("lib.rs");
    let Ok(lib_text) = fs::read_to_string(&lib) else {
        return;
    };
    let modules: Vec<String> = lib_text
        .lines()
        .filter_map(|line| {
            let line = line.trim_start();
            let rest = line
                .strip_prefix("pub mod ")
                .or_else(|| line.strip_prefix("pub(crate) mod "))
                .or_else(|| line.strip_prefix("mod "))?;
            Some(rest.trim_end_matches(['{', ';', ' ']).to_owned())
        })
        .collect();
    let krate_rel = krate.strip_prefix(root).unwrap_or(krate).to_path_buf();
    let mut files = Vec::new();
    collect_rs(&src, &mut files);
    files.sort();
    for file in files {
        let rel = file.strip_prefix(root).unwrap_or(&file).to_path_buf();
        if !is_library_code(&rel) || file == lib {
            continue;
        }
        let Ok(text) = fs::read_to_string(&file) else {
            continue;
        };
        let room = file
            .strip_prefix(&src)
            .unwrap_or(&file)
            .to_string_lossy()
            .replace('\\', "/");
        check_file_imports(&krate_rel, &room, &rel, &text, &modules, problems);
    }
}

/// The import checks of one file: `room` is its path under `src/`, `modules` the crate's
/// top-level modules.
pub fn check_file_imports(
    krate: &Path,
    room: &str,
    rel: &Path,
    text: &str,
    modules: &[String],
    problems: &mut Vec<Problem>,
) {
    let krate = krate.to_string_lossy().replace('\\', "/");
    let rules: Vec<&ImportRule> = IMPORT_RULES
        .iter()
        .filter(|r| {
            r.krate == krate
                && (room == r.room || (r.room.ends_with('/') && room.starts_with(r.room)))
        })
        .collect();
    let sibling = SIBLING_FOLDERS.iter().find_map(|(k, folder, shared)| {
        let rest = room.strip_prefix(folder)?.strip_prefix('/')?;
        let own = rest.split(['/', '.']).next()?;
        (*k == krate && own != "mod").then_some((*folder, own.to_owned(), *shared))
    });
    let mut push = |line: usize, message: String| {
        problems.push(Problem {
            path: rel.to_path_buf(),
            line,
            message,
        })
    };
    let mut in_tests = false;
    for (index, line) in text.lines().enumerate() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        // A unit-test module at the end of a file may reach anything.
        if code.starts_with("#[cfg(test)]") || code.starts_with("#[cfg(all(test") {
            in_tests = true;
        }
        if in_tests {
            continue;
        }
        for (at, _) in code.match_indices("crate::") {
            let preceded = code[..at].chars().last();
            if preceded.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
                continue;
            }
            let path = &code[at..];
            let first: String = path["crate::".len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '{')
                .collect();
            if first.starts_with('{') || !modules.contains(&first) {
                push(
                    index + 1,
                    format!(
                        "imports the crate root (`crate::{first}`): import the item from its module, so imports only run down"
                    ),
                );
            }
            for rule in &rules {
                for forbidden in rule.forbidden {
                    if path.starts_with(forbidden) {
                        push(
                            index + 1,
                            format!("`{}` may not import `{forbidden}`: {}", rule.room, rule.why),
                        );
                    }
                }
            }
            if let Some((folder, own, shared)) = &sibling {
                let prefix = format!("crate::{folder}::");
                if let Some(other) = path.strip_prefix(&prefix) {
                    let other: String = other
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if other != *own && !shared.contains(&other.as_str()) {
                        push(
                            index + 1,
                            format!(
                                "`{folder}/{own}` may not import its sibling `{folder}/{other}`: each is a room of its own"
                            ),
                        );
                    }
                }
            }
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
        let rule = format!("//! The {}.\n", concat!("seed ", "rule"));
        assert!(problems("crates/a/src/lib.rs", &rule)[0].contains("source document"));
        let cited = "//! | bounded channels (001, 3.2) | here |\n";
        assert!(problems("crates/a/src/lib.rs", cited)[0].contains("source document"));
        assert!(problems("crates/a/src/lib.rs", "//! 1 (003 ms)\n").is_empty());
    }

    fn imports(room: &str, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        let modules = ["store", "backend", "recipe", "lease"].map(String::from);
        check_file_imports(
            Path::new("crates/conc-lock-store"),
            room,
            Path::new(room),
            text,
            &modules,
            &mut out,
        );
        out.into_iter().map(|p| p.message).collect()
    }

    #[test]
    fn imports_only_run_down() {
        assert!(imports("backend/redis/mod.rs", "use crate::store::LockStore;").is_empty());
        assert!(imports("backend/redis/mod.rs", "use crate::LockStore;")[0].contains("crate root"));
        assert!(
            imports("backend/redis/mod.rs", "use crate::{lease, store};")[0].contains("crate root")
        );
        assert!(
            imports("backend/redis/mod.rs", "use crate::recipe::guard;")[0]
                .contains("never a recipe")
        );
        assert!(
            imports("recipe/fair.rs", "use crate::backend::memory::X;")[0]
                .contains("every backend")
        );
        assert!(
            imports("backend/redis/a.rs", "use crate::backend::sqlite::X;")[0].contains("sibling")
        );
        assert!(imports("backend/redis/a.rs", "use crate::backend::tls::split;").is_empty());
        assert!(imports("backend/redis/a.rs", "use crate::backend::redis::X;").is_empty());
        assert!(
            imports("store.rs", "// use crate::recipe::X;").is_empty(),
            "comments"
        );
        assert!(
            imports(
                "store.rs",
                "#[cfg(test)]\nmod tests { use crate::recipe::X; }"
            )
            .is_empty()
        );
        assert!(imports("store.rs", "use crate::recipe::X;")[0].contains("vocabulary"));
    }
}
