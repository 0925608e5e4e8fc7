//! Every error path: a one-line message and a non-zero exit, never a panic or a backtrace.

use std::process::Command;

fn fails(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_conc"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run conc");
    assert!(
        !output.status.success(),
        "`conc {}` succeeded",
        args.join(" ")
    );
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !stderr.contains("panicked") && !stderr.contains("stack backtrace"),
        "{stderr}"
    );
    stderr
}

fn one_line(stderr: String) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got:\n{stderr}");
    lines[0].to_owned()
}

#[test]
fn a_bad_store_url_is_one_line() {
    let line = one_line(fails(&["locks", "list", "--locks", "mysql://nope"]));
    assert!(
        line.starts_with("conc: unknown store `mysql://nope`"),
        "{line}"
    );
    let line = one_line(fails(&["demo", "--sessions", "redis://127.0.0.1:6379"]));
    assert!(line.contains("sessions cannot live in Redis"), "{line}");
    let line = one_line(fails(&["locks", "list"]));
    assert!(line.contains("needs --locks"), "{line}");
}

#[test]
fn an_unreachable_server_is_one_line() {
    let line = one_line(fails(&[
        "locks",
        "list",
        "--locks",
        "postgres://postgres@127.0.0.1:1/test",
    ]));
    assert!(
        line.starts_with("conc: cannot open the PostgreSQL lock store"),
        "{line}"
    );
    let line = one_line(fails(&[
        "locks",
        "list",
        "--locks",
        "postgres://postgres@127.0.0.1:1/test",
    ]));
    assert!(line.contains("connection refused"), "{line}");
    let line = one_line(fails(&["locks", "list", "--locks", "redis://127.0.0.1:1"]));
    assert!(
        line.starts_with("conc: cannot open the Redis lock store"),
        "{line}"
    );
    let line = one_line(fails(&[
        "locks",
        "list",
        "--locks",
        "sqlite:/nonexistent-dir/x/locks.db",
    ]));
    assert!(line.contains("the file does not exist"), "{line}");
    assert!(!std::path::Path::new("/nonexistent-dir").exists());
}

#[test]
fn a_bad_flag_gets_clap_s_message_and_exit_2() {
    let output = Command::new(env!("CARGO_BIN_EXE_conc"))
        .args(["demo", "--bogus"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr
            .lines()
            .next()
            .unwrap()
            .contains("unexpected argument '--bogus'"),
        "{stderr}"
    );
    let stderr = fails(&["demo", "--failure-rate", "7"]);
    assert!(stderr.contains("between 0 and 1"), "{stderr}");
    let stderr = fails(&["demo", "--duration", "forever"]);
    assert!(stderr.contains("not a duration"), "{stderr}");
}

/// A missing database names itself, in `conc locks` and `conc demo` alike.
#[test]
fn a_missing_database_is_named() {
    let Ok(url) = std::env::var("CONC_TEST_POSTGRES_URL") else {
        println!(
            "skipped: CONC_TEST_POSTGRES_URL is not set, so the missing-database message is not tested"
        );
        return;
    };
    let (base, _) = url.rsplit_once('/').expect("a URL with a database");
    let missing = format!("{base}/conc_no_such_database");
    let line = one_line(fails(&["locks", "list", "--locks", &missing]));
    assert!(line.contains("the database does not exist"), "{line}");
    let line = one_line(fails(&["demo", "--duration", "1s", "--locks", &missing]));
    assert!(line.contains("the database does not exist"), "{line}");
}

/// A negative duration reaches the parser and gets its real message, not clap's
/// "unexpected argument".
#[test]
fn a_negative_duration_gets_the_real_message() {
    let output = Command::new(env!("CARGO_BIN_EXE_conc"))
        .args(["demo", "--duration", "-1"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot be negative"), "{stderr}");
}

/// A CA and a server certificate signed by it, as PEM: (ca, cert, key).
fn certificates() -> (String, String, String) {
    let made = conc_lock_store::servers::TestCertificates::new().unwrap();
    (made.ca, made.cert, made.key)
}

/// On a private PostgreSQL with TLS and a password user: a wrong password and a
/// certificate that does not verify each give their own one-line error, in `conc locks`
/// and `conc demo`.
#[test]
fn a_wrong_password_and_a_bad_certificate_are_named() {
    let (_, cert, key) = certificates();
    let Some(server) = conc_lock_store::servers::PrivatePostgres::start(
        Some((&cert, &key)),
        &["host all app 127.0.0.1/32 scram-sha-256"],
    )
    .unwrap() else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(
            &server.url("postgres", "postgres", ""),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(connection);
        client
            .batch_execute("CREATE ROLE app LOGIN PASSWORD 'right'")
            .await
            .unwrap();
    });
    let wrong_password = server.url("app:wrong", "postgres", "");
    let unverified = server.url("postgres", "postgres", "?sslmode=require");
    for args in [
        vec!["locks", "list", "--locks"],
        vec!["demo", "--duration", "1s", "--locks"],
    ] {
        let with = |url: &str| {
            let mut all = args.clone();
            all.push(url);
            one_line(fails(&all))
        };
        let line = with(&wrong_password);
        assert!(line.contains("authentication failed"), "{line}");
        let line = with(&unverified);
        assert!(line.contains("TLS failed"), "{line}");
    }
}
