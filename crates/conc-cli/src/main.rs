//! `conc`: the demo of the conc crates, and lock-store operations for on-call.
//!
//! ```text
//! conc demo [--locks SPEC] [--sessions SPEC] [--users N] [--conversations N]
//!           [--duration 10s] [--failure-rate 0.2] [--seed N] [--no-chaos] [--unfenced]
//! conc locks list [--prefix P] [--limit N] [--json] --locks SPEC
//! conc locks inspect KEY [--json] --locks SPEC
//! conc locks release KEY --force [--json] --locks SPEC
//! conc locks cleanup [--json] --locks SPEC
//! ```
//!
//! A SPEC is `memory`, `sqlite:PATH`, `postgres://USER@HOST/DB` or `redis://HOST:PORT`.

mod demo;
mod locks;
mod stores;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// The conc demo, and lock-store operations for on-call.
#[derive(Debug, Parser)]
#[command(name = "conc", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Simulate a chat backend under load and check its invariants (about 10 s).
    Demo {
        /// Lock store: memory, sqlite:PATH, postgres://…, redis://… (also rediss://,
        /// redis+cluster://, redis+sentinel://HOST:PORT/MASTER) (default: a SQLite file in a
        /// temporary folder, shared with the sessions).
        #[arg(long)]
        locks: Option<String>,
        /// Session store: memory, sqlite:PATH, postgres://… (default: as for --locks).
        #[arg(long)]
        sessions: Option<String>,
        /// Simulated users.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1000))]
        users: u16,
        /// Conversations they share.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=1000))]
        conversations: u16,
        /// How long to run, such as `10s` or `500ms`.
        #[arg(long, default_value = "10s", value_parser = parse_duration, allow_hyphen_values = true)]
        duration: Duration,
        /// Share of provider calls that fail (429, 503 or a hang), 0 to 1.
        #[arg(long, default_value_t = 0.2, value_parser = parse_rate)]
        failure_rate: f64,
        /// Seed of the simulation's randomness. It fixes each user's schedule of actions
        /// (which conversation, when to double-click, switch, stop, queue or not, how the
        /// provider fails); it cannot fix how the tasks interleave on the runtime's
        /// threads or the stores' timing, so the counts vary a little between runs.
        #[arg(long, default_value_t = 2026)]
        seed: u64,
        /// Inject no faults. By default the demo forces releases and takes locks over in
        /// the middle of generations, as an operator would, and pauses a generator past
        /// its lease, as a stalled VM would.
        #[arg(long)]
        no_chaos: bool,
        /// Write replies the unsafe way, a local check and then an unfenced append, to show
        /// what the fence prevents: with per-process locks or faults, the invariants break.
        #[arg(long)]
        unfenced: bool,
    },
    /// Inspect and operate locks.
    Locks {
        /// The lock store: memory, sqlite:PATH, postgres://…, redis://… (also rediss://,
        /// redis+cluster://, redis+sentinel://HOST:PORT/MASTER).
        #[arg(long, global = true)]
        locks: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        action: LockAction,
    },
}

#[derive(Debug, Subcommand)]
enum LockAction {
    /// Live locks, by key.
    List {
        /// Only keys that start with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Who holds KEY, since when, with which fence.
    Inspect {
        /// The lock's key.
        key: String,
    },
    /// Free KEY whoever holds it (its holder learns at once, through the store's
    /// notifications).
    Release {
        /// The lock's key.
        key: String,
        /// Required: this frees a lock someone else holds.
        #[arg(long)]
        force: bool,
    },
    /// Remove expired locks.
    Cleanup,
    /// Remove a namespace that is done with (after a test or a trial): every lock and, on
    /// Redis, every key of the store's prefix. Refused while a lock is live, and on the
    /// default namespace (no `prefix=` on Redis or etcd, no `schema=` on PostgreSQL),
    /// unless --force.
    Purge {
        /// The key prefix of the namespace on Redis or etcd (the URL's `prefix=`).
        #[arg(long)]
        prefix: Option<String>,
        /// Also free live locks, and allow the default namespace, which other services
        /// may share.
        #[arg(long)]
        force: bool,
    },
}

/// A duration, by `humantime` (`10s`, `500ms`, `1m 30s`); a bare number is seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.starts_with('-') {
        return Err(format!(
            "`{text}`: a duration cannot be negative; give one such as 10s or 500ms"
        ));
    }
    let duration = match text.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() => Duration::try_from_secs_f64(seconds)
            .map_err(|e| format!("`{text}` is not a duration: {e}"))?,
        _ => humantime::parse_duration(text)
            .map_err(|e| format!("`{text}` is not a duration such as 10s or 500ms: {e}"))?,
    };
    if !(Duration::from_millis(50)..=Duration::from_secs(3600)).contains(&duration) {
        return Err(format!(
            "`{text}`: the duration must be between 50ms and 60m"
        ));
    }
    Ok(duration)
}

fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!(
            "`{text}`: the failure rate must be between 0 and 1"
        ))
    }
}

async fn run(cli: Cli) -> Result<ExitCode, String> {
    match cli.command {
        Command::Demo {
            locks,
            sessions,
            users,
            conversations,
            duration,
            failure_rate,
            seed,
            no_chaos,
            unfenced,
        } => {
            let temp =
                tempfile::tempdir().map_err(|e| format!("cannot make a temporary folder: {e}"))?;
            let default = format!("sqlite:{}", temp.path().join("conc-demo.db").display());
            let lock_spec = locks.unwrap_or_else(|| default.clone());
            let session_spec = sessions.unwrap_or(default);
            let lock_store = stores::locks(&lock_spec).await.map_err(|e| e.to_string())?;
            let session_store = stores::sessions(&session_spec)
                .await
                .map_err(|e| e.to_string())?;
            eprintln!(
                "conc demo: {users} users, {conversations} conversations, {duration:?}, failure rate {failure_rate}, seed {seed}\n  locks: {lock_spec}\n  sessions: {session_spec}"
            );
            let options = demo::DemoOptions {
                users: usize::from(users),
                conversations: usize::from(conversations),
                duration,
                failure_rate,
                seed,
                progress: std::io::stderr().is_terminal(),
                chaos: !no_chaos,
                unfenced,
            };
            let report = demo::run(options, lock_store, session_store).await?;
            println!("{}", report.render());
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Locks {
            locks,
            json,
            action,
        } => {
            let spec = locks.ok_or(
                "`conc locks` needs --locks SPEC (memory, sqlite:PATH, postgres://…, redis://…)",
            )?;
            // On call, a mistyped path must not create an empty store and report "no locks".
            if let Some(path) = spec.strip_prefix("sqlite:") {
                let path = path.strip_prefix("//").unwrap_or(path);
                let path = path.split('?').next().unwrap_or(path);
                if !std::path::Path::new(path).exists() {
                    return Err(format!(
                        "no lock store at `{path}`: the file does not exist (conc locks never creates one; check the path)"
                    ));
                }
            }
            let spec = match &action {
                LockAction::Purge { prefix, force } => {
                    locks::purge_spec(&spec, prefix.as_deref(), *force)?
                }
                _ => spec,
            };
            let looking = matches!(action, LockAction::List { .. } | LockAction::Inspect { .. });
            let store = if looking {
                stores::locks_read_only(&spec).await
            } else {
                stores::locks(&spec).await
            }
            .map_err(|e| e.to_string())?;
            let output = match action {
                LockAction::List { prefix, limit } => {
                    locks::list(&*store, &prefix, limit, json).await?
                }
                LockAction::Inspect { key } => locks::inspect(&*store, &key, json).await?,
                LockAction::Release { key, force } => {
                    if !force {
                        return Err(format!(
                            "releasing `{key}` frees a lock someone else holds: add --force if you mean it"
                        ));
                    }
                    locks::release(&*store, &key, json).await?
                }
                LockAction::Cleanup => locks::cleanup(&*store, json).await?,
                LockAction::Purge { force, .. } => locks::purge(&*store, force, json).await?,
            };
            println!("{output}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with success; mistakes get clap's message.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("conc: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("conc: {message}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_rates_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("10h").is_err());
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("-1").unwrap_err().contains("negative"));
        assert!(parse_duration("0s").is_err());
        assert_eq!(parse_rate("0.5"), Ok(0.5));
        assert!(parse_rate("2").is_err());
    }
}
