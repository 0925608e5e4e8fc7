//! The repository's own lint as an ordinary test (rust-analyzer's tidy test).

#[test]
fn tidy() {
    let problems = xtask::tidy::check(&xtask::workspace_root());
    let listed: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert!(
        problems.is_empty(),
        "tidy found problems:\n{}",
        listed.join("\n")
    );
}
