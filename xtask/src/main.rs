//! `cargo xtask`: the workspace's task runner (see README.md).

use std::env;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use xtask::{report, tidy, workspace_root};

mod binaries;
mod latest;
mod wasm;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  ci                               fmt, clippy, tidy, features, msrv, test, binaries, loom, wasm,
                                   doc, bench build, latest
  lint                             fmt check, clippy, tidy
  features                         each library crate with no features, then each alone
  msrv                             cargo check on the declared rust-version (if installed)
  tidy                             the repository's own lints
  test                             every crate's tests, all features; the lock store's without `tls`
  binaries                         each binary built alone, against every URL kind its help names
  wasm                             conc-core and conc-retry's WebAssembly tests, in Node and Chromium
  latest                           clippy against the newest compatible versions (a copy, updated)
  loom [CRATE] [--preemptions N]   the loom models (default: every crate that has them, N = 3)
  bench [--quick] [--goals|FILTER] the criterion harness and target/conc-bench/report.md
                                   (--goals: only the cases an issue sets a goal for)
  bench-report DIR OUT MACHINE     the report of a criterion directory from another machine
  services [--start]               whether PostgreSQL and Redis answer at the test URLs
";

/// Crates whose loom models `cargo xtask loom` runs; the others are reported as having none.
const LOOM_CRATES: &[&str] = &["conc-core", "conc-retry"];

type Result<T = ()> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let root = workspace_root();
    if let Err(e) = env::set_current_dir(&root) {
        eprintln!("xtask: cannot enter {}: {e}", root.display());
        return ExitCode::FAILURE;
    }
    let started = Instant::now();
    let outcome = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("lint") => lint(),
        Some("features") => features(),
        Some("msrv") => msrv(),
        Some("tidy") => step_tidy(),
        Some("test") => test(),
        Some("binaries") => binaries::binaries(),
        Some("latest") => latest::latest(),
        Some("wasm") => wasm::wasm(),
        Some("loom") => loom(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("bench-report") => bench_report(&args[1..]),
        Some("services") => services(args.iter().any(|a| a == "--start")),
        Some("-h" | "--help" | "help") | None => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(format!("unknown command `{other}`\n\n{USAGE}")),
    };
    match outcome {
        Ok(()) => {
            eprintln!("xtask: done in {:.1}s", started.elapsed().as_secs_f64());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one named step, printing the command and its time; fails naming the step.
fn run(step: &str, cmd: &mut Command) -> Result {
    let shown = format!("{cmd:?}").replace('"', "");
    eprintln!("==> [{step}] {shown}");
    let started = Instant::now();
    let status = cmd
        .status()
        .map_err(|e| format!("step `{step}` could not start: {e}"))?;
    let took = started.elapsed().as_secs_f64();
    if status.success() {
        eprintln!("<== [{step}] ok in {took:.1}s");
        Ok(())
    } else {
        Err(format!("step `{step}` failed after {took:.1}s ({status})"))
    }
}

fn cargo() -> Command {
    Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn ci() -> Result {
    lint()?;
    features()?;
    msrv()?;
    test()?;
    binaries::binaries()?;
    loom(&[])?;
    wasm::wasm()?;
    doc()?;
    run(
        "bench-build",
        cargo().args(["bench", "--workspace", "--all-features", "--no-run"]),
    )?;
    latest::latest()?;
    run(
        "clippy-sqlx-peers",
        cargo()
            .args([
                "clippy",
                "--manifest-path",
                SQLX_PEERS,
                "--all-targets",
                "--locked",
            ])
            .args(["--", "-D", "warnings"])
            .env("CARGO_TARGET_DIR", target_dir()?),
    )
}

/// The bench crate that is a workspace of its own (see `benches/peers-sqlx/README.md`).
const SQLX_PEERS: &str = "benches/peers-sqlx/Cargo.toml";

/// The main workspace's target folder, absolute, for the crates outside the workspace.
fn target_dir() -> Result<PathBuf> {
    let dir =
        env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    std::path::absolute(&dir).map_err(|e| format!("the target folder {}: {e}", dir.display()))
}

fn lint() -> Result {
    run("fmt", cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(
        "fmt-sqlx-peers",
        cargo().args(["fmt", "--manifest-path", SQLX_PEERS, "--", "--check"]),
    )?;
    run(
        "clippy",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    step_tidy()
}

fn step_tidy() -> Result {
    eprintln!("==> [tidy] repository lints");
    let started = Instant::now();
    let problems = tidy::check(Path::new("."));
    if problems.is_empty() {
        eprintln!("<== [tidy] ok in {:.1}s", started.elapsed().as_secs_f64());
        return Ok(());
    }
    for problem in &problems {
        eprintln!("    {problem}");
    }
    Err(format!("step `tidy` failed: {} problem(s)", problems.len()))
}

/// The workspace on its declared minimum Rust (`rust-version` in Cargo.toml): `cargo
/// check` of every crate and target with that toolchain, when rustup has it. Where it is
/// not installed (this project's machines carry one toolchain and cannot fetch another),
/// the step says so in one `skipped:` line instead of passing silently.
fn msrv() -> Result {
    let manifest = std::fs::read_to_string("Cargo.toml")
        .map_err(|e| format!("msrv: reading Cargo.toml: {e}"))?;
    let version = manifest
        .lines()
        .find_map(|line| {
            let rest = line.trim().strip_prefix("rust-version")?;
            Some(
                rest.trim()
                    .strip_prefix('=')?
                    .trim()
                    .trim_matches('"')
                    .to_owned(),
            )
        })
        .ok_or("msrv: Cargo.toml declares no rust-version")?;
    let toolchain = format!("+{version}");
    let installed = Command::new("rustup")
        .args(["run", &version, "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        eprintln!(
            "--- [msrv] the declared minimum Rust {version} is not installed (`rustup toolchain install {version}` for a full check): checking the library crates' dependencies' own rust-version instead; clippy's `incompatible_msrv` lint (in `lint`) checks the standard-library APIs used"
        );
        return dependencies_msrv(&version);
    }
    run(
        &format!("msrv {version}"),
        Command::new("cargo")
            .args([
                toolchain.as_str(),
                "check",
                "--workspace",
                "--all-targets",
                "--all-features",
            ])
            .env("CARGO_TARGET_DIR", "target/msrv"),
    )
}

/// The partial MSRV check for a machine without the declared toolchain: no crate that the
/// library crates depend on (normal dependencies, all features, as locked) declares a
/// `rust-version` newer than `declared`. Language features newer than `declared` are not
/// caught here; only a build on that toolchain catches them.
fn dependencies_msrv(declared: &str) -> Result {
    let output = cargo()
        .args([
            "metadata",
            "--format-version",
            "1",
            "--all-features",
            "--locked",
        ])
        .output()
        .map_err(|e| format!("msrv: cargo metadata: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "msrv: cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("msrv: cargo metadata's JSON: {e}"))?;
    // `1.89` and `1.89.0` are the same version: missing parts count as 0.
    let version = |text: &str| -> [u64; 3] {
        let mut parts = text.split('.').map(|part| part.parse().unwrap_or(0));
        [(); 3].map(|()| parts.next().unwrap_or(0))
    };
    let packages: std::collections::HashMap<&str, &serde_json::Value> = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["id"].as_str()?, p)))
        .collect();
    let nodes: std::collections::HashMap<&str, &serde_json::Value> = metadata["resolve"]["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| Some((n["id"].as_str()?, n)))
        .collect();
    let mut stack: Vec<&str> = packages
        .iter()
        .filter(|(_, p)| FEATURE_CRATES.contains(&p["name"].as_str().unwrap_or("")))
        .map(|(id, _)| *id)
        .collect();
    if stack.len() != FEATURE_CRATES.len() {
        return Err("msrv: cargo metadata does not list every library crate".into());
    }
    let mut seen = std::collections::HashSet::new();
    let mut newer = Vec::new();
    while let Some(id) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        let package = packages[id];
        if let Some(needs) = package["rust_version"].as_str()
            && version(needs) > version(declared)
        {
            newer.push(format!(
                "{} {} needs Rust {needs}",
                package["name"], package["version"]
            ));
        }
        for dep in nodes
            .get(id)
            .and_then(|n| n["deps"].as_array())
            .into_iter()
            .flatten()
        {
            let normal = dep["dep_kinds"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k["kind"].is_null()));
            if normal && let Some(pkg) = dep["pkg"].as_str() {
                stack.push(pkg);
            }
        }
    }
    if newer.is_empty() {
        eprintln!(
            "<== [msrv] ok: none of the {} crates the libraries depend on needs a Rust newer than {declared}",
            seen.len()
        );
        Ok(())
    } else {
        Err(format!(
            "msrv: dependencies newer than the declared rust-version {declared}: {}",
            newer.join("; ")
        ))
    }
}

/// The library crates whose feature combinations are checked one by one.
const FEATURE_CRATES: &[&str] = &[
    "conc-core",
    "conc-async",
    "conc-retry",
    "conc-lock-store",
    "conc-session",
];

/// Each library crate with no features, then with each feature alone (as
/// `cargo hack --each-feature` would), through clippy with `-D warnings`: a feature that
/// does not build alone, or leaves dead code behind, fails here.
fn features() -> Result {
    let output = cargo()
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .output()
        .map_err(|e| format!("cargo metadata could not start: {e}"))?;
    if !output.status.success() {
        return Err(format!("cargo metadata failed ({})", output.status));
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("cargo metadata's JSON: {e}"))?;
    let packages = metadata["packages"].as_array().cloned().unwrap_or_default();
    for name in FEATURE_CRATES {
        let package = packages
            .iter()
            .find(|p| p["name"] == *name)
            .ok_or_else(|| format!("features: no package `{name}` in the workspace"))?;
        let mut sets = vec![String::new()];
        if let Some(features) = package["features"].as_object() {
            sets.extend(features.keys().filter(|f| *f != "default").cloned());
        }
        for set in sets {
            let mut cmd = cargo();
            cmd.args(["clippy", "-p", name, "--lib", "--no-default-features"]);
            if !set.is_empty() {
                cmd.args(["--features", &set]);
            }
            cmd.args(["--", "-D", "warnings"]);
            let label = if set.is_empty() {
                "none".to_owned()
            } else {
                set
            };
            run(&format!("features {name}: {label}"), &mut cmd)?;
        }
    }
    Ok(())
}

fn test() -> Result {
    run(
        "test",
        cargo().args(["test", "--workspace", "--all-features", "--no-fail-fast"]),
    )?;
    // What only a build without a feature does: the networked backends without `tls`
    // refuse the URLs that ask for it.
    run(
        "test-without-tls",
        cargo().args([
            "test",
            "-p",
            "conc-lock-store",
            "--lib",
            "--no-default-features",
            "--features",
            "postgres,redis,etcd",
            "without_tls",
        ]),
    )
}

fn doc() -> Result {
    // All features (what docs.rs builds) and the default ones (what a user gets).
    run(
        "doc",
        cargo()
            .args(["doc", "--workspace", "--all-features", "--no-deps"])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
    run(
        "doc-default-features",
        cargo()
            .args(["doc", "--workspace", "--no-deps"])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )
}

fn loom(args: &[String]) -> Result {
    let mut preemptions = "3".to_owned();
    let mut only = None;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--preemptions" => {
                preemptions = iter.next().ok_or("--preemptions needs a number")?.clone();
                preemptions
                    .parse::<u32>()
                    .map_err(|_| format!("--preemptions `{preemptions}` is not a number"))?;
            }
            name => only = Some(name.to_owned()),
        }
    }
    let root = Path::new(".");
    let mut ran = 0;
    for krate in tidy::crates(root) {
        let name = krate
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if only.as_ref().is_some_and(|o| *o != name) || name == "xtask" || name == "benches" {
            continue;
        }
        if !LOOM_CRATES.contains(&name.as_str()) {
            eprintln!("--- [loom] {name}: no loom models (nothing to run)");
            continue;
        }
        // Own target folder: `--cfg loom` would otherwise throw away the normal build cache.
        run(
            &format!("loom {name}"),
            cargo()
                .args(["test", "--release", "--lib", "-p", &name])
                .env("RUSTFLAGS", "--cfg loom")
                .env("CARGO_TARGET_DIR", "target/loom")
                .env("LOOM_MAX_PREEMPTIONS", &preemptions),
        )?;
        ran += 1;
    }
    if let Some(name) = only
        && ran == 0
    {
        return Err(format!(
            "loom: `{name}` has no loom models (crates with models: {LOOM_CRATES:?})"
        ));
    }
    Ok(())
}

/// The report of a run made elsewhere (a machine with more cores, say): the bench
/// binaries ran there with `CARGO_TARGET_DIR` pointing at a folder whose `criterion`
/// directory came back as `DIR`; the report and chart go to `OUT`, headed with `MACHINE`.
fn bench_report(args: &[String]) -> Result {
    let [dir, out, machine] = args else {
        return Err("bench-report needs DIR OUT MACHINE (see `cargo xtask help`)".into());
    };
    let (rows, report) = report::write(Path::new(dir), Path::new(out), machine)
        .map_err(|e| format!("bench report: {e}"))?;
    if rows.is_empty() {
        return Err(format!(
            "bench report: no criterion measurements under {dir}"
        ));
    }
    eprintln!(
        "==> [bench-report] {} rows written to {}",
        rows.len(),
        report.display()
    );
    Ok(())
}

/// `--features etcd` when this machine can build and run the etcd rows (`protoc` to build
/// the client, `etcd` for the private cluster); otherwise nothing, and a `skipped:` line.
fn bench_features() -> Vec<&'static str> {
    let works = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if works("protoc") && works("etcd") {
        vec!["--features", "etcd"]
    } else {
        println!("skipped: protoc or etcd is not installed, so the etcd rows are not measured");
        Vec::new()
    }
}

/// Criterion's arguments for `bench --quick`.
const QUICK: [&str; 8] = [
    "--warm-up-time",
    "0.1",
    "--measurement-time",
    "0.3",
    "--sample-size",
    "10",
    // The analysis's bootstrap, 100 000 resamples by default, is a second per case.
    "--nresamples",
    "2000",
];

fn bench(args: &[String]) -> Result {
    let quick = args.iter().any(|a| a == "--quick");
    let goals = report::goal_filter();
    let mut filter: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    if args.iter().any(|a| a == "--goals") {
        if !filter.is_empty() {
            return Err("bench: --goals is a filter of its own; give no other".into());
        }
        filter.push(&goals);
    }
    let features = bench_features();
    let mut cmd = cargo();
    cmd.args(["bench", "-p", "conc-benches"]).args(&features);
    for bench in ["core", "async", "retry", "lock_store", "session"] {
        cmd.args(["--bench", bench]);
    }
    cmd.arg("--");
    if quick {
        cmd.args(QUICK);
    }
    for f in &filter {
        cmd.arg(f);
    }
    run("bench", &mut cmd)?;
    // The peers built on sqlx, a workspace of their own, into the same criterion folder.
    let mut sqlx = cargo();
    sqlx.args(["bench", "--manifest-path", SQLX_PEERS, "--locked", "--"])
        .env("CARGO_TARGET_DIR", target_dir()?);
    if quick {
        sqlx.args(QUICK);
    }
    for f in &filter {
        sqlx.arg(f);
    }
    run("bench-sqlx-peers", &mut sqlx)?;
    // The hand-off latency is a distribution (p50, p99) and saturation a throughput per
    // concurrency level, not criterion cases: each writes a table of its own.
    // The hand-off table holds goals of its own (p50 and p99 across processes).
    let goals_only = args.iter().any(|a| a == "--goals");
    let tables: Vec<&str> = ["handoff", "scale"]
        .into_iter()
        .filter(|bench| {
            if goals_only {
                *bench == "handoff"
            } else {
                filter.is_empty() || filter.iter().any(|f| bench.contains(f.as_str()))
            }
        })
        .collect();
    for bench in &tables {
        let mut table = cargo();
        table
            .args(["bench", "-p", "conc-benches"])
            .args(&features)
            .args(["--bench", bench, "--"]);
        if quick {
            table.arg("--quick");
        }
        run(&format!("bench-{bench}"), &mut table)?;
    }
    let machine = machine_description();
    let (rows, report) = report::write(
        Path::new("target/criterion"),
        Path::new("target/conc-bench"),
        &machine,
    )
    .map_err(|e| format!("bench report: {e}"))?;
    for bench in &tables {
        let table = std::fs::read_to_string(format!("target/conc-bench/{bench}.md"))
            .map_err(|e| format!("bench report: the {bench} table: {e}"))?;
        let mut text =
            std::fs::read_to_string(&report).map_err(|e| format!("bench report: {e}"))?;
        text.push('\n');
        text.push_str(&table.replacen("# ", "## ", 1));
        std::fs::write(&report, text).map_err(|e| format!("bench report: {e}"))?;
    }
    eprintln!(
        "==> [bench] {} rows written to {} (and ratios.svg)",
        rows.len(),
        report.display()
    );
    for row in rows.iter().filter(|r| r.verdict() == Some(false)) {
        eprintln!(
            "    goal not met: {} vs {}: ratio {:.2}",
            row.case,
            row.peer,
            row.ratio()
        );
    }
    Ok(())
}

fn machine_description() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!(
        "{model}, {cpus} threads available, {} {}",
        env::consts::OS,
        env::consts::ARCH
    )
}

/// A server the tests read from an environment variable.
struct Service {
    name: &'static str,
    var: &'static str,
    default_port: u16,
    start: &'static str,
}

const SERVICES: &[Service] = &[
    Service {
        name: "PostgreSQL",
        var: "CONC_TEST_POSTGRES_URL",
        default_port: 5432,
        start: "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    },
    Service {
        name: "Redis",
        var: "CONC_TEST_REDIS_URL",
        default_port: 6379,
        start: "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save \"\" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log",
    },
];

/// `host:port` of a `scheme://[user[:pass]@]host[:port][/path]` URL.
fn host_port(url: &str, default_port: u16) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() {
        return None;
    }
    let has_port = host
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !host.ends_with(']');
    Some(if has_port {
        host.to_owned()
    } else {
        format!("{host}:{default_port}")
    })
}

fn answers(addr: &str) -> bool {
    addr.to_socket_addrs()
        .map(|mut addrs| {
            addrs.any(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
        })
        .unwrap_or(false)
}

fn services(start: bool) -> Result {
    let mut down = Vec::new();
    for service in SERVICES {
        let Ok(url) = env::var(service.var) else {
            eprintln!(
                "{}: {} is not set; its tests print `skipped` (set it, e.g. by running .ci/run)",
                service.name, service.var
            );
            continue;
        };
        let Some(addr) = host_port(&url, service.default_port) else {
            down.push(format!(
                "{}: {} = `{url}` is not a URL",
                service.name, service.var
            ));
            continue;
        };
        if answers(&addr) {
            eprintln!("{}: answers at {addr}", service.name);
            continue;
        }
        if start {
            eprintln!(
                "{}: down at {addr}; starting: {}",
                service.name, service.start
            );
            let _ = Command::new("bash").args(["-c", service.start]).status();
            for _ in 0..30 {
                if answers(&addr) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            if answers(&addr) {
                eprintln!("{}: answers at {addr}", service.name);
                continue;
            }
        }
        down.push(format!(
            "{}: no answer at {addr} ({})",
            service.name, service.var
        ));
    }
    if down.is_empty() {
        Ok(())
    } else {
        Err(down.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::host_port;

    #[test]
    fn host_port_of_service_urls() {
        assert_eq!(
            host_port("postgres://postgres@127.0.0.1:5432/test", 1).as_deref(),
            Some("127.0.0.1:5432")
        );
        assert_eq!(
            host_port("redis://127.0.0.1", 6379).as_deref(),
            Some("127.0.0.1:6379")
        );
        assert_eq!(
            host_port("redis://u:p@[::1]:6380/0", 1).as_deref(),
            Some("[::1]:6380")
        );
        assert_eq!(host_port("nonsense", 1), None);
    }
}
