//! `conc demo` through a PgBouncer of the test's own in transaction mode
//! (`pool_mode=transaction` on both URLs): every invariant holds, and it sees about as many
//! errors as the same run straight to PostgreSQL.

use std::process::Command;

use conc_lock_store::servers::{BouncerMode, PrivatePgBouncer};

/// The demo's `errors` count, from its table.
fn errors(stdout: &str) -> u64 {
    stdout
        .lines()
        .find_map(|line| {
            let rest = line.trim_start().strip_prefix("errors")?;
            rest.trim().parse().ok()
        })
        .unwrap_or_else(|| panic!("no errors row in:\n{stdout}"))
}

/// Runs the demo on `url` for both stores; returns its error count, after checking that it
/// exited 0 with every invariant ok.
fn demo(url: &str, what: &str) -> u64 {
    let output = Command::new(env!("CARGO_BIN_EXE_conc"))
        .args([
            "demo",
            "--duration",
            "4s",
            "--locks",
            url,
            "--sessions",
            url,
        ])
        .output()
        .expect("run conc");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && !stdout.contains("BROKEN"),
        "{what}: stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let count = errors(&stdout);
    if count > 0 {
        assert!(
            stdout.contains("errors seen"),
            "{what}: a run with errors says which:\n{stdout}"
        );
    }
    count
}

#[test]
fn the_demo_through_a_transaction_pooler_keeps_its_invariants() {
    let Ok(direct) = std::env::var("CONC_TEST_POSTGRES_URL") else {
        println!(
            "skipped: CONC_TEST_POSTGRES_URL is not set, so the demo is not run through PgBouncer"
        );
        return;
    };
    let config: tokio_postgres::Config = direct.parse().expect("a PostgreSQL URL");
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let database = config.get_dbname().unwrap_or("postgres").to_owned();
    let user = config.get_user().unwrap_or("postgres").to_owned();
    let Some(bouncer) = PrivatePgBouncer::start(&host, port, BouncerMode::Transaction, 5).unwrap()
    else {
        return;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let (straight, pooled) = (
        format!("conc_demo_direct_{}_{nanos}", std::process::id()),
        format!("conc_demo_pooled_{}_{nanos}", std::process::id()),
    );
    let separator = if direct.contains('?') { '&' } else { '?' };
    let direct_errors = demo(&format!("{direct}{separator}schema={straight}"), "straight");
    let pooled_errors = demo(
        &bouncer.url(
            &user,
            &database,
            &format!("?pool_mode=transaction&schema={pooled}"),
        ),
        "through PgBouncer",
    );
    println!("errors: {direct_errors} straight, {pooled_errors} through PgBouncer");
    assert!(
        pooled_errors <= 2 * direct_errors + 5,
        "{pooled_errors} errors through PgBouncer against {direct_errors} straight"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (admin, connection) = tokio_postgres::connect(&direct, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        for schema in [straight, pooled] {
            admin
                .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                .await
                .unwrap();
        }
    });
}
