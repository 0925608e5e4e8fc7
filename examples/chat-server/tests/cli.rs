//! The command line refuses bad settings with a message, instead of bending them.

use std::process::Command;

#[test]
fn a_failure_rate_outside_0_to_1_is_an_error() {
    for bad in ["1.5", "-0.1", "lots"] {
        let output = Command::new(env!("CARGO_BIN_EXE_chat-server"))
            .args(["--failure-rate", bad])
            .output()
            .expect("run chat-server");
        assert!(
            !output.status.success(),
            "--failure-rate {bad} was accepted"
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("give a share from 0 to 1"),
            "--failure-rate {bad}: {stderr}"
        );
    }
}
