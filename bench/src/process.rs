//! Child processes the harness starts (the release `adder` and `totaler`,
//! and itself as a bare server), as `testkit::process::Logged` children: a
//! log file, a wait until an HTTP path answers 200, SIGTERM with a grace
//! period then SIGKILL, killed when dropped so an aborted run leaves nothing
//! behind. Also resident memory from `/proc/PID/status`.

use std::{net::SocketAddr, path::Path, process::Command, time::Duration};

use anyhow::{Context, bail};
use testkit::process::{Logged, NotReady};

/// A running child process.
pub struct Process {
    pub name: String,
    child: Logged,
}

/// Resident memory of a process, in MiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// Now (`VmRSS`).
    pub rss_mb: f64,
    /// Peak so far (`VmHWM`).
    pub peak_mb: f64,
}

const STOP_GRACE: Duration = Duration::from_secs(15);
const READY_POLL: Duration = Duration::from_millis(20);

impl Process {
    /// Starts `program` with `args` and `env`, appending its output to `log`.
    pub fn start(
        name: &str,
        program: &Path,
        args: &[&str],
        env: &[(&str, String)],
        log: &Path,
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(program);
        command.args(args).envs(env.iter().map(|(k, v)| (k, v)));
        let child = Logged::spawn(&mut command, log)
            .with_context(|| format!("starting {} (log {})", program.display(), log.display()))?;
        Ok(Self {
            name: name.to_owned(),
            child,
        })
    }

    /// Waits until `GET path` on `addr` answers 200, failing if the process exits.
    pub async fn wait_ready(
        &mut self,
        addr: SocketAddr,
        path: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        match self.child.wait_ready(addr, path, timeout, READY_POLL).await {
            Ok(()) => Ok(()),
            Err(NotReady::Exited(status)) => {
                bail!("{} exited during start-up: {status}", self.name)
            }
            Err(NotReady::Io(e)) => Err(e).context(format!("polling {}", self.name)),
            Err(NotReady::Timeout) => bail!(
                "{} was not ready on {addr}{path} within {timeout:?}",
                self.name
            ),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Current and peak resident memory.
    pub fn memory(&self) -> anyhow::Result<Memory> {
        memory_of(self.pid()).with_context(|| format!("reading the memory of {}", self.name))
    }

    /// SIGTERM, then SIGKILL after the grace period; waits for the exit.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if self.child.terminate(STOP_GRACE).await?.is_none() {
            eprintln!("bench: {} ignored SIGTERM; killed it", self.name);
        }
        Ok(())
    }
}

/// Current and peak resident memory of process `pid`.
pub fn memory_of(pid: u32) -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(Memory {
        rss_mb: status_kb(&status, "VmRSS:").map_or(0.0, |kb| kb / 1024.0),
        peak_mb: status_kb(&status, "VmHWM:").map_or(0.0, |kb| kb / 1024.0),
    })
}

/// Resident memory of process `pid` now (`VmRSS`), in KiB.
pub fn rss_kb(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status_kb(&status, "VmRSS:").with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// The value of a `Name:   1234 kB` line of `/proc/PID/status`.
fn status_kb(status: &str, name: &str) -> Option<f64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_resident_size() {
        let kb = rss_kb(std::process::id()).expect("our own /proc status");
        assert!(kb > 100.0, "{kb} KiB");
        let memory = memory_of(std::process::id()).expect("our own /proc status");
        assert!(memory.peak_mb * 1024.0 >= kb - 1.0);
    }
}
