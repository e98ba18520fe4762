//! Waiting for a real binary with a deadline: a test that waits on a child
//! process must fail, not hang, when the process does not exit in time.

use std::{
    process::{Child, ExitStatus, Output},
    time::{Duration, Instant},
};

/// Waits for `child` to exit within `limit`; past it, kills the child and
/// panics with `what`. Returns the exit status and how long it took.
pub async fn exit_within(child: &mut Child, limit: Duration, what: &str) -> (ExitStatus, Duration) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("poll the child") {
            return (status, started.elapsed());
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {limit:?}, killed");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits within `limit` for `child` to exit, collecting what it writes to
/// its piped stdout and stderr meanwhile (so a chatty child never blocks on
/// a full pipe); past the limit, kills it and panics with `what`.
pub async fn output_within(child: Child, limit: Duration, what: &str) -> (Output, Duration) {
    let pid = child.id().to_string();
    let started = Instant::now();
    let waiting = tokio::task::spawn_blocking(move || child.wait_with_output());
    match tokio::time::timeout(limit, waiting).await {
        Ok(joined) => (
            joined.expect("join").expect("collect the child's output"),
            started.elapsed(),
        ),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid])
                .status();
            panic!("{what}: still running after {limit:?}, killed");
        }
    }
}

/// Sends SIGTERM to `pid`.
pub fn terminate(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM {pid}");
}
