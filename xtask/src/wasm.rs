//! `cargo xtask wasm`: conc-core and conc-retry on `wasm32-unknown-unknown`, their
//! WebAssembly tests (`tests/*_wasm.rs`, wasm-bindgen-test) run in Node and in headless
//! Chromium (through chromedriver). The target comes from rustup where it can be added;
//! where it cannot (no download), from Debian: `rustc-web`'s compiler, `rust-web-src`'s std
//! sources built for the target (`-Zbuild-std`, in `target/wasm-debian`) and `lld`'s
//! `wasm-ld` (`CONC_WASM_ROUTE=debian` takes that route anyway). The test runner is
//! `wasm-bindgen-cli` at the version of `wasm-bindgen` in the lock file, installed once
//! with `cargo install` when it is missing. A machine without them prints a `skipped:`
//! line naming what is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Result, cargo, run};

const TARGET: &str = "wasm32-unknown-unknown";

/// The crates, their WebAssembly test targets and the features to test them with.
const TESTS: &[(&str, &str, &str)] = &[
    ("conc-core", "core_wasm", "web"),
    ("conc-retry", "retry_wasm", ""),
];

/// How this machine builds for the target.
struct Route {
    /// Debian's compiler and std sources, not rustup's target.
    debian: bool,
    /// The target folder of the builds for the target.
    target_dir: PathBuf,
}

impl Route {
    /// rustup's target where it is (or can be) installed, else Debian's packages.
    fn find() -> Result<Option<Self>> {
        let forced = std::env::var("CONC_WASM_ROUTE").is_ok_and(|r| r == "debian");
        if !forced
            && (target_installed()
                || Command::new("rustup")
                    .args(["target", "add", TARGET])
                    .status()
                    .is_ok_and(|s| s.success()))
        {
            return Ok(Some(Self {
                debian: false,
                target_dir: crate::target_dir()?,
            }));
        }
        let packaged = Path::new(DEBIAN_RUSTC).exists()
            && Path::new(DEBIAN_STD).exists()
            && Command::new("wasm-ld").arg("--version").output().is_ok();
        if !packaged {
            println!(
                "skipped: the {TARGET} target is not installed, rustup could not add it, and Debian's rustc-web, rust-web-src and lld are not all installed, so the WebAssembly tests do not run"
            );
            return Ok(None);
        }
        eprintln!("xtask wasm: building for {TARGET} with Debian's rustc-web and std sources");
        Ok(Some(Self {
            debian: true,
            target_dir: crate::target_dir()?.join("wasm-debian"),
        }))
    }

    /// `cargo SUBCOMMAND` for the target: on the Debian route, its compiler, linker and a
    /// std built from source.
    fn cargo(&self, subcommand: &str) -> Command {
        let mut cmd = cargo();
        cmd.arg(subcommand)
            .env("CARGO_TARGET_DIR", &self.target_dir);
        if self.debian {
            cmd.arg("-Zbuild-std=std,panic_abort")
                .env("RUSTC_BOOTSTRAP", "1")
                .env("RUSTC", DEBIAN_RUSTC)
                .env("RUSTDOC", DEBIAN_RUSTDOC)
                .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER", "wasm-ld");
        }
        cmd
    }
}

/// Debian's `rustc-web` compiler and its rustdoc.
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_RUSTDOC: &str = "/usr/bin/rustdoc";
/// Debian's `rust-web-src`: std's sources, for `-Zbuild-std`.
const DEBIAN_STD: &str = "/usr/lib/rustlib/src/rust/library";

pub(crate) fn wasm() -> Result {
    let Some(route) = Route::find()? else {
        return Ok(());
    };
    let Some(runner) = runner()? else {
        return Ok(());
    };
    for (krate, _, features) in TESTS {
        // What docs.rs builds for the target: the docs, every feature the target takes.
        let mut doc = route.cargo("doc");
        doc.args(["--no-deps", "-p", krate, "--target", TARGET]);
        if !features.is_empty() {
            doc.args(["--features", features]);
        }
        run(
            &format!("wasm-doc {krate}"),
            doc.env("RUSTDOCFLAGS", "-D warnings"),
        )?;
        run(
            &format!("wasm-build {krate}"),
            route.cargo("build").args(["-p", krate, "--target", TARGET]),
        )?;
        if !features.is_empty() {
            run(
                &format!("wasm-build {krate} --features {features}"),
                route.cargo("build").args([
                    "-p",
                    krate,
                    "--target",
                    TARGET,
                    "--features",
                    features,
                ]),
            )?;
        }
    }
    let has_node = Command::new("node").arg("--version").output().is_ok();
    let chromedriver = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    for (krate, test, features) in TESTS {
        let test_args = [
            "-p",
            krate,
            "--target",
            TARGET,
            "--test",
            test,
            "--features",
            features,
        ];
        if has_node {
            let mut node = route.cargo("test");
            node.args(test_args)
                .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER", &runner);
            run(&format!("wasm-node {krate}"), &mut node)?;
        } else {
            println!(
                "skipped: node is not installed, so {krate}'s WebAssembly tests do not run in Node"
            );
        }
        match &chromedriver {
            Some(driver) => {
                let mut browser = route.cargo("test");
                browser
                    .args(test_args)
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
    page(&route, &runner, chromedriver.is_some())
}

/// The chat's Rust front end: `examples/chat-web` built with the `wasm-release` profile,
/// `wasm-bindgen --target web` into `target/chat-web/pkg`, its size reported, then the
/// chat-server's browser test of it.
fn page(route: &Route, runner: &Path, chromium: bool) -> Result {
    run(
        "wasm-build chat-web",
        route.cargo("build").args([
            "-p",
            "chat-web",
            "--profile",
            "wasm-release",
            "--target",
            TARGET,
        ]),
    )?;
    let bindgen = runner.with_file_name("wasm-bindgen");
    let out = crate::target_dir()?.join("chat-web").join("pkg");
    let module = route
        .target_dir
        .join(TARGET)
        .join("wasm-release")
        .join("chat_web.wasm");
    run(
        "wasm-bindgen chat-web",
        Command::new(&bindgen)
            .args(["--target", "web", "--no-typescript", "--out-dir"])
            .arg(&out)
            .arg(&module),
    )?;
    let page = out.join("chat_web_bg.wasm");
    report_size(&page)?;
    if !chromium {
        println!(
            "skipped: chromedriver is not installed, so the Rust front end is not tested in Chromium"
        );
        return Ok(());
    }
    run(
        "wasm-page chat-server browser_wasm",
        cargo()
            .args(["test", "-p", "chat-server", "--test", "browser_wasm"])
            .env("CONC_CHAT_WEB_DIR", &out),
    )
}

/// The page's size, gzipped, and conc-core's share of it, into
/// `target/conc-bench/wasm-size.md`; fails when conc-core's share passes its budget.
fn report_size(page: &Path) -> Result {
    let bytes = std::fs::read(page).map_err(|e| format!("{}: {e}", page.display()))?;
    let sizes = xtask::wasm_size::measure(&bytes, "conc_core")?;
    // What ships: the module without its names (kept above to name conc-core's part).
    let shipped = xtask::wasm_size::strip_custom_sections(&bytes)?;
    let stripped = page.with_extension("stripped.wasm");
    std::fs::write(&stripped, &shipped).map_err(|e| format!("{}: {e}", stripped.display()))?;
    let gzip = Command::new("gzip")
        .args(["-9", "-c"])
        .arg(&stripped)
        .output()
        .map_err(|e| format!("gzip could not start: {e}"))?;
    if !gzip.status.success() {
        return Err(format!("gzip failed ({})", gzip.status));
    }
    let gzipped = gzip.stdout.len() as f64;
    let kb = |bytes: f64| bytes / 1024.0;
    // conc-core's functions' share of the shipped module, applied to the gzipped size.
    let share = sizes.crate_code as f64 / shipped.len().max(1) as f64;
    let core = gzipped * share;
    let table = format!(
        "# WebAssembly size\n\n\
         The chat's Rust front end (`examples/chat-web`): profile `wasm-release` (opt-level z, \
         LTO), `wasm-bindgen --target web`, custom sections (names) stripped; no `wasm-opt` \
         (Debian 12's binaryen 108 breaks wasm-bindgen's externref table).\n\
         conc-core's share: the bodies of the functions named for it (code inlined elsewhere \
         counts for its caller), as a share of the module, applied to the gzipped size.\n\n\
         | module | raw | gzipped | conc-core (raw) | conc-core (gzipped, est.) | budget |\n\
         | --- | ---: | ---: | ---: | ---: | ---: |\n\
         | chat_web_bg.wasm | {:.1} KB | {:.1} KB | {:.1} KB | {:.1} KB | 30 KB |\n",
        kb(shipped.len() as f64),
        kb(gzipped),
        kb(sizes.crate_code as f64),
        kb(core),
    );
    let dir = crate::target_dir()?.join("conc-bench");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::write(dir.join("wasm-size.md"), &table).map_err(|e| format!("wasm-size.md: {e}"))?;
    eprint!("{table}");
    if sizes.named == 0 {
        println!(
            "skipped: the page's module has no name section, so conc-core's share is not measured"
        );
    } else if kb(core) > 30.0 {
        return Err(format!(
            "conc-core takes {:.1} KB of the page gzipped, over its 30 KB budget",
            kb(core)
        ));
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
