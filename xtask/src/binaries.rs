//! `cargo xtask binaries`: each binary built alone (`cargo build -p PACKAGE`), as a user
//! builds it, run against every kind of store URL its `--help` names.
//!
//! A whole-workspace build unifies cargo features across crates, so a binary whose own
//! manifest forgets a backend's feature still gets it there (another crate turns it on)
//! and works in every workspace test, while the same binary built alone refuses the URL
//! its help offers. Building each binary alone and trying each kind catches that.
//!
//! The kinds are read from the help text, so a kind added to the help without a way to
//! try it here fails the step instead of passing untried.

use std::env;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

type Result<T = ()> = std::result::Result<T, String>;

/// A URL kind as a help text names it, and the store URL that tries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Memory,
    Sqlite,
    Postgres,
    Redis,
    RedisTls,
    RedisSentinel,
}

impl Kind {
    /// Every kind, with the words a help text names it by.
    const ALL: [(Kind, &'static str); 6] = [
        (Kind::Memory, "memory"),
        (Kind::Sqlite, "sqlite:"),
        (Kind::Postgres, "postgres://"),
        (Kind::Redis, "redis://"),
        (Kind::RedisTls, "rediss://"),
        (Kind::RedisSentinel, "redis+sentinel://"),
    ];

    fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(kind, _)| *kind == self)
            .map_or("?", |(_, name)| name)
    }

    /// The URL to try, or `None` (with the reason) when this machine has no such server.
    fn url(self, dir: &Path, file: &str) -> std::result::Result<String, String> {
        let from_env = |var: &str| {
            env::var(var)
                .map_err(|_| format!("{var} is not set, so `{}` is not tried", self.name()))
        };
        match self {
            Kind::Memory => Ok("memory".into()),
            Kind::Sqlite => Ok(format!("sqlite:{}", dir.join(file).display())),
            Kind::Postgres => from_env("CONC_TEST_POSTGRES_URL"),
            Kind::Redis => from_env("CONC_TEST_REDIS_URL"),
            // No TLS server runs here: a port nobody listens on. The binary must get as far
            // as connecting (and fail there), not refuse the URL for want of a backend.
            Kind::RedisTls => Ok(format!("rediss://127.0.0.1:{}", closed_port()?)),
            // Nor any Sentinel: the binary must get as far as asking one.
            Kind::RedisSentinel => Ok(format!(
                "redis+sentinel://127.0.0.1:{}/conc-check",
                closed_port()?
            )),
        }
    }

    /// Whether a run with this kind is expected to succeed (else: to fail while
    /// connecting).
    fn reachable(self) -> bool {
        !matches!(self, Kind::RedisTls | Kind::RedisSentinel)
    }
}

/// A free port, closed again: nothing listens there.
fn closed_port() -> std::result::Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// The kinds a help text names.
fn kinds_named(help: &str) -> Vec<Kind> {
    Kind::ALL
        .iter()
        .filter(|(_, name)| help.contains(name))
        .map(|(kind, _)| *kind)
        .collect()
}

/// Builds `package`'s binary `bin` alone and copies it out of the shared target folder, so
/// that no later workspace build replaces it while it is tried.
fn build_alone(package: &str, bin: &str, into: &Path) -> Result<PathBuf> {
    crate::run(
        &format!("binaries: build {bin} alone"),
        crate::cargo().args(["build", "-p", package, "--bin", bin]),
    )?;
    let target =
        env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    let built = target.join("debug").join(bin);
    let copy = into.join(bin);
    std::fs::copy(&built, &copy)
        .map_err(|e| format!("binaries: copying {}: {e}", built.display()))?;
    Ok(copy)
}

fn help(binary: &Path, args: &[&str]) -> Result<String> {
    let output = Command::new(binary)
        .args(args)
        .arg("--help")
        .output()
        .map_err(|e| format!("{}: {e}", binary.display()))?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// What one try showed.
struct Outcome {
    success: bool,
    output: String,
}

/// Runs a command to its end (at most `limit`).
fn run_to_end(command: &mut Command, limit: Duration) -> Result<Outcome> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{command:?}: {e}"))?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            let output = child.wait_with_output().map_err(|e| e.to_string())?;
            let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&output.stderr));
            return Ok(Outcome {
                success: status.success(),
                output: text,
            });
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{command:?} ran past {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts a server, waits for the line that says it serves (success) or for its exit
/// (failure, with what it printed), then stops it.
fn run_until_serving(command: &mut Command, serving: &str, limit: Duration) -> Result<Outcome> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{command:?}: {e}"))?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let (lines, received) = mpsc::sync_channel::<String>(64);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr)
            .lines()
            .map_while(std::result::Result::ok)
        {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let mut output = String::new();
    let outcome = loop {
        match received.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                output.push_str(&line);
                output.push('\n');
                if line.contains(serving) {
                    break Outcome {
                        success: true,
                        output,
                    };
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = child.wait();
                break Outcome {
                    success: false,
                    output,
                };
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if started.elapsed() > limit {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "{command:?} did not serve within {limit:?}:\n{output}"
                    ));
                }
            }
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    Ok(outcome)
}

/// Checks one try against what its kind expects.
fn judge(what: &str, kind: Kind, outcome: &Outcome) -> Result {
    let refused_backend = outcome.output.contains("cargo feature")
        || outcome.output.contains("has no") && outcome.output.contains("backend");
    if refused_backend {
        return Err(format!(
            "{what}: this build refuses `{}`, which its help offers:\n{}",
            kind.name(),
            outcome.output
        ));
    }
    if kind.reachable() && !outcome.success {
        return Err(format!("{what} failed:\n{}", outcome.output));
    }
    if !kind.reachable() && (outcome.success || outcome.output.contains("invalid")) {
        return Err(format!(
            "{what}: expected a connection failure (no server listens there):\n{}",
            outcome.output
        ));
    }
    eprintln!("    ok: {what}");
    Ok(())
}

/// Every binary, built alone, against every kind its help names.
pub(crate) fn binaries() -> Result {
    let dir = std::env::temp_dir().join(format!("conc-xtask-binaries-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("binaries: {}: {e}", dir.display()))?;
    let outcome = try_binaries(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

fn try_binaries(dir: &Path) -> Result {
    eprintln!("==> [binaries] each binary built alone, against every URL kind its help names");
    let started = Instant::now();
    let mut skipped = Vec::new();
    let mut url = |kind: Kind, file: &str| match kind.url(dir, file) {
        Ok(url) => Some(url),
        Err(reason) => {
            skipped.push(reason);
            None
        }
    };

    // conc: the demo's --locks and --sessions, and `locks list --locks`.
    let conc = build_alone("conc-cli", "conc", dir)?;
    let demo_help = help(&conc, &["demo"])?;
    let (locks_help, sessions_help) = split_flags(&demo_help, "--locks", "--sessions");
    let demo = |locks: &str, sessions: &str| {
        let mut command = Command::new(&conc);
        command.args([
            "demo",
            "--duration",
            "1s",
            "--locks",
            locks,
            "--sessions",
            sessions,
        ]);
        run_to_end(&mut command, Duration::from_secs(120))
    };
    for kind in kinds_named(&locks_help) {
        let Some(locks) = url(kind, "demo-locks.db") else {
            continue;
        };
        judge(
            &format!("conc demo --locks {}", kind.name()),
            kind,
            &demo(&locks, "memory")?,
        )?;
        let mut list = Command::new(&conc);
        list.args(["locks", "list", "--locks", &locks]);
        let what = format!("conc locks list --locks {}", kind.name());
        judge(
            &what,
            kind,
            &run_to_end(&mut list, Duration::from_secs(60))?,
        )?;
    }
    for kind in kinds_named(&sessions_help) {
        let Some(sessions) = url(kind, "demo-sessions.db") else {
            continue;
        };
        judge(
            &format!("conc demo --sessions {}", kind.name()),
            kind,
            &demo("memory", &sessions)?,
        )?;
    }
    let locks_command_help = help(&conc, &["locks"])?;
    let (locks_command_help, _) = split_flags(&locks_command_help, "--locks", "--json");
    for kind in kinds_named(&locks_command_help) {
        if !kinds_named(&locks_help).contains(&kind) {
            return Err(format!(
                "binaries: `conc locks --help` names `{}`, which no check here tries",
                kind.name()
            ));
        }
    }

    // chat-server: --store (sessions, and locks unless --locks says otherwise) and --locks.
    let chat = build_alone("chat-server", "chat-server", dir)?;
    let chat_help = help(&chat, &[])?;
    let (store_help, locks_help) = split_flags(&chat_help, "--store", "--locks");
    let serve = |store: &str, locks: Option<&str>| {
        let mut command = Command::new(&chat);
        command.args(["--addr", "127.0.0.1:0", "--store", store]);
        if let Some(locks) = locks {
            command.args(["--locks", locks]);
        }
        run_until_serving(&mut command, "open http://", Duration::from_secs(60))
    };
    for kind in kinds_named(&store_help) {
        let Some(store) = url(kind, "chat.db") else {
            continue;
        };
        judge(
            &format!("chat-server --store {}", kind.name()),
            kind,
            &serve(&store, None)?,
        )?;
    }
    let mut lock_kinds = kinds_named(&locks_help);
    // "any lock store URL": every kind the lock store's own parser takes.
    if locks_help.contains("any lock store URL") {
        for (kind, _) in Kind::ALL {
            if !lock_kinds.contains(&kind) {
                lock_kinds.push(kind);
            }
        }
    }
    for kind in lock_kinds {
        let Some(locks) = url(kind, "chat-locks.db") else {
            continue;
        };
        let what = format!("chat-server --locks {}", kind.name());
        judge(&what, kind, &serve("memory", Some(&locks))?)?;
    }
    for reason in skipped {
        println!("skipped: binaries: {reason}");
    }
    eprintln!(
        "<== [binaries] ok in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The help text of flag `first` and of flag `second`: each from its own line to the next
/// line that starts another flag.
fn split_flags(help: &str, first: &str, second: &str) -> (String, String) {
    let section = |flag: &str| {
        let mut lines = help.lines().skip_while(|line| {
            let line = line.trim_start();
            !(line.starts_with(&format!("{flag} ")) || line == flag)
        });
        let Some(own) = lines.next() else {
            return String::new();
        };
        let mut text = own.to_owned();
        for line in lines.take_while(|line| !line.trim_start().starts_with('-')) {
            text.push('\n');
            text.push_str(line);
        }
        text
    };
    (section(first), section(second))
}

#[cfg(test)]
mod tests {
    use super::{Kind, kinds_named, split_flags};

    #[test]
    fn kinds_are_read_from_each_flags_help() {
        let help = "Options:\n      --store <STORE>\n          sqlite:PATH, postgres://USER@HOST/DB or memory\n      --locks <LOCKS>\n          any lock store URL, Redis (`redis://`, `rediss://`) included\n  -h, --help\n";
        let (store, locks) = split_flags(help, "--store", "--locks");
        assert_eq!(
            kinds_named(&store),
            vec![Kind::Memory, Kind::Sqlite, Kind::Postgres]
        );
        assert_eq!(kinds_named(&locks), vec![Kind::Redis, Kind::RedisTls]);
    }
}
