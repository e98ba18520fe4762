//! A test process that dies leaves nothing running. Every child a test
//! starts through testkit, and every process that child starts (the
//! services the operators' scripts detach, PostgreSQL under `pg_ctl` or
//! Patroni, RabbitMQ's Erlang VM), carries this process's mark in its
//! environment ([`MARK`]). A sentinel, started with the first marked
//! child, in a process group of its own, waits for this process to end:
//! its stdin is a pipe from us, which closes however we end, SIGKILL and
//! a killed `cargo test` included. Then it sends SIGTERM, and 5 s later
//! SIGKILL, to every process that still carries the mark (but epmd, which
//! other Erlang nodes of the host share). A test whose guards ran has
//! stopped everything already, and the sentinel finds nothing.
//!
//! It must not stop anything it did not start: the mark is unique to this
//! process, and nothing unmarked is signalled.

use std::{
    io,
    process::{ChildStdin, Command, Stdio},
    sync::OnceLock,
};

/// The environment variable that marks a test process's children.
pub const MARK: &str = "TALLY_TEST_SENTINEL";

/// Waits for stdin to close, then stops every process marked `$1`.
const SWEEP: &str = r#"
while read -r _; do :; done
sweep() {
  for env in /proc/[0-9]*/environ; do
    pid=${env#/proc/}; pid=${pid%/environ}
    [ "$pid" = "$$" ] && continue
    grep -qzx "TALLY_TEST_SENTINEL=$1" "$env" 2>/dev/null || continue
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = epmd ] && continue
    kill -"$2" "$pid" 2>/dev/null
  done
}
sweep "$1" TERM
sleep 5
sweep "$1" KILL
"#;

/// Marks `command` as this test process's: when this process dies, the
/// sentinel stops it and everything it started that is still running.
pub fn guard(command: &mut Command) -> &mut Command {
    match sentinel() {
        Some(mark) => command.env(MARK, mark),
        None => command,
    }
}

/// This process's mark, the sentinel started on first use; `None` when
/// it could not start (then children are not guarded, and it says so once).
fn sentinel() -> Option<&'static str> {
    static SENTINEL: OnceLock<Option<(String, ChildStdin)>> = OnceLock::new();
    SENTINEL
        .get_or_init(|| match start() {
            Ok(armed) => Some(armed),
            Err(e) => {
                eprintln!("testkit: no sentinel ({e}); a killed test may leave processes behind");
                None
            }
        })
        .as_ref()
        .map(|(mark, _)| mark.as_str())
}

/// Starts the sentinel; its stdin's write end is held for this process's
/// life (never written to: its closing is the signal).
fn start() -> io::Result<(String, ChildStdin)> {
    use std::os::unix::process::CommandExt;

    let mark = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
    let mut child = Command::new("sh")
        .args(["-c", SWEEP, "sentinel", &mark])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| io::Error::other("the sentinel's stdin"))?;
    Ok((mark, stdin))
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead, BufReader},
        path::Path,
        time::{Duration, Instant},
    };

    use super::*;

    /// Set in the child this test runs: it is the helper then.
    const HELPER: &str = "TESTKIT_SENTINEL_HELPER";

    #[test]
    fn a_test_process_killed_with_sigkill_leaves_nothing_running() {
        if std::env::var_os(HELPER).is_some() {
            return helper();
        }
        let mut test = Command::new(std::env::current_exe().expect("this test binary"))
            .args([
                "sentinel::tests::a_test_process_killed_with_sigkill_leaves_nothing_running",
                "--exact",
                "--nocapture",
            ])
            .env(HELPER, "1")
            .stdout(Stdio::piped())
            .spawn()
            .expect("run this test as the helper");
        let stdout = BufReader::new(test.stdout.take().expect("piped"));
        let pid = stdout
            .lines()
            .map_while(Result::ok)
            .find_map(|line| line.strip_prefix("guarded pid ")?.parse::<u32>().ok())
            .expect("the helper's guarded child");
        let proc = format!("/proc/{pid}");
        assert!(Path::new(&proc).exists(), "the guarded child runs");
        test.kill().expect("SIGKILL the helper test process");
        test.wait().expect("reap it");
        let deadline = Instant::now() + Duration::from_secs(15);
        while Path::new(&proc).exists() {
            assert!(
                Instant::now() < deadline,
                "pid {pid} still runs 15 s after its test process was killed"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts a guarded child that would outlive this process, says its
    /// pid, and waits to be killed.
    fn helper() {
        let mut child = guard(Command::new("sleep").arg("300"))
            .spawn()
            .expect("start sleep");
        println!("guarded pid {}", child.id());
        std::thread::sleep(Duration::from_secs(300));
        let _ = child.kill();
        let _ = child.wait();
    }
}
