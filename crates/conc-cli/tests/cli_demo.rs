//! `conc demo`, run as a user runs it.

use std::process::{Command, Output};

fn conc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_conc"))
        .args(args)
        .output()
        .expect("run conc")
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The README's main command, as it is: about 10 s, every invariant holds.
#[test]
fn the_default_demo_runs_and_keeps_its_invariants() {
    let output = conc(&["demo"]);
    let (stdout, stderr) = text(&output);
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for line in [
        "generations started",
        "generations rejected (please wait)",
        "duplicates coalesced",
        "retries",
        "circuit openings",
        "chaos: forced releases",
        "chaos: take-overs",
        "chaos: generators paused past their lease",
        "no two generations commit in one conversation",
        "no write from a superseded generation is accepted",
        "every message saved exactly once",
        "no session update lost",
    ] {
        assert!(stdout.contains(line), "missing `{line}` in:\n{stdout}");
    }
    assert!(!stdout.contains("BROKEN"), "{stdout}");
    assert!(
        stderr.contains("sqlite:"),
        "the default stores are SQLite: {stderr}"
    );
}

fn run_pair(locks: &str, sessions: &str, extra: &[&str]) -> Vec<Output> {
    let children: Vec<_> = [1, 2]
        .iter()
        .map(|seed| {
            Command::new(env!("CARGO_BIN_EXE_conc"))
                .args([
                    "demo",
                    "--duration",
                    "3s",
                    "--locks",
                    locks,
                    "--sessions",
                    sessions,
                    "--seed",
                    &seed.to_string(),
                ])
                .args(extra)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn conc")
        })
        .collect();
    children
        .into_iter()
        .map(|c| c.wait_with_output().expect("wait"))
        .collect()
}

/// Two processes on one SQLite file: exclusion and the invariants hold across both.
#[test]
fn two_processes_on_shared_stores_keep_the_invariants() {
    let dir = tempfile::tempdir().unwrap();
    let spec = format!("sqlite:{}", dir.path().join("shared.db").display());
    for output in run_pair(&spec, &spec, &[]) {
        let (stdout, stderr) = text(&output);
        assert!(
            output.status.success(),
            "stdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }
}

/// Two processes with their locks on a Redis Cluster (`redis+cluster://`) and their
/// sessions in one SQLite file.
#[test]
fn two_processes_on_a_redis_cluster_keep_the_invariants() {
    let Some(cluster) = conc_lock_store::servers::PrivateRedisCluster::start(3, 0).unwrap() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sessions = format!("sqlite:{}", dir.path().join("shared.db").display());
    for output in run_pair(&cluster.url(), &sessions, &[]) {
        let (stdout, stderr) = text(&output);
        assert!(
            output.status.success(),
            "stdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }
}

/// Two processes with their locks on a private three-member etcd cluster (`etcd://`, the
/// `etcd` feature) and their sessions in one SQLite file.
#[cfg(feature = "etcd")]
#[test]
fn two_processes_on_an_etcd_cluster_keep_the_invariants() {
    let Some(cluster) = conc_lock_store::servers::PrivateEtcdCluster::start(3).unwrap() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sessions = format!("sqlite:{}", dir.path().join("shared.db").display());
    for output in run_pair(&cluster.url(), &sessions, &[]) {
        let (stdout, stderr) = text(&output);
        assert!(
            output.status.success(),
            "stdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }
}

/// With per-process (memory) locks over shared sessions, two processes do generate at
/// once, but the session store's fence refuses the superseded generation's reply: the
/// invariants hold.
#[test]
fn per_process_locks_over_shared_sessions_are_saved_by_the_fence() {
    let dir = tempfile::tempdir().unwrap();
    let sessions = format!("sqlite:{}", dir.path().join("shared.db").display());
    for output in run_pair("memory", &sessions, &[]) {
        let (stdout, stderr) = text(&output);
        assert!(
            output.status.success(),
            "stdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }
}

/// The checker is real: with per-process locks and replies written the unsafe way (a local
/// check, then an unfenced append), the two processes commit over each other, and the
/// demo says so and fails.
#[test]
fn unfenced_replies_with_per_process_locks_break_and_the_demo_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let sessions = format!("sqlite:{}", dir.path().join("shared.db").display());
    let outputs = run_pair("memory", &sessions, &["--unfenced"]);
    let broken = outputs.iter().filter(|o| !o.status.success()).count();
    assert!(
        broken >= 1,
        "no process noticed two generations committing at once"
    );
    for output in outputs.iter().filter(|o| !o.status.success()) {
        let (stdout, _) = text(output);
        assert!(stdout.contains("BROKEN"), "{stdout}");
    }
}

/// The demo's leader: with chaos, one leader is killed and the next paused past its lease;
/// the paused one's late write is refused by the session store's fence, and the leaders'
/// invariant holds. With `--unfenced` that late write gets through, after the successor's,
/// and the demo says the invariant broke.
#[test]
fn a_paused_leader_is_fenced_off_and_without_the_fence_the_demo_says_so() {
    for unfenced in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let store = format!("sqlite:{}", dir.path().join("demo.db").display());
        let mut args = vec![
            "demo",
            "--duration",
            "4s",
            "--locks",
            &store,
            "--sessions",
            &store,
        ];
        if unfenced {
            args.push("--unfenced");
        }
        let output = conc(&args);
        let (stdout, stderr) = text(&output);
        let line = |label: &str| {
            stdout
                .lines()
                .find(|l| l.trim_start().starts_with(label))
                .unwrap_or_else(|| panic!("no `{label}` line:\n{stdout}\n{stderr}"))
                .to_owned()
        };
        assert!(line("chaos: leaders killed").ends_with(" 1"), "{stdout}");
        assert!(
            line("chaos: leaders paused past their lease").ends_with(" 1"),
            "{stdout}"
        );
        let invariant = line("no two leaders' fenced writes interleave");
        if unfenced {
            assert!(invariant.contains("BROKEN"), "{stdout}");
            assert!(!output.status.success());
        } else {
            assert!(invariant.contains(" ok "), "{stdout}\n{stderr}");
            assert!(output.status.success(), "{stdout}\n{stderr}");
            assert!(
                !line("leader writes refused (stale fence)").ends_with(" 0"),
                "the paused leader's late write was refused: {stdout}"
            );
        }
    }
}
