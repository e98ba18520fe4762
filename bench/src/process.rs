//! Child processes the harness starts (the release `adder` and `totaler`,
//! and itself as a bare server): start with a log file, wait until an HTTP
//! path answers 200, read memory from `/proc/PID/status`, stop with SIGTERM
//! and, past a grace period, SIGKILL. Every child is also killed when its
//! handle drops, so an aborted run leaves nothing behind.

use std::{
    fs::OpenOptions,
    net::SocketAddr,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::http;

/// A running child process.
pub struct Process {
    pub name: String,
    child: Child,
    pid: u32,
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

impl Process {
    /// Starts `program` with `args` and `env`, appending its output to `log`.
    pub fn start(
        name: &str,
        program: &Path,
        args: &[&str],
        env: &[(&str, String)],
        log: &Path,
    ) -> anyhow::Result<Self> {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let pid = child.id().context("a just-started child has a pid")?;
        Ok(Self {
            name: name.to_owned(),
            child,
            pid,
        })
    }

    /// Waits until `GET path` on `addr` answers 200, failing if the process exits.
    pub async fn wait_ready(
        &mut self,
        addr: SocketAddr,
        path: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited during start-up: {status}", self.name);
            }
            if let Ok(mut connection) = http::Connection::open(addr, path).await
                && let Ok((200, _)) = connection.get().await
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!(
            "{} was not ready on {addr}{path} within {timeout:?}",
            self.name
        )
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Current and peak resident memory.
    pub fn memory(&self) -> anyhow::Result<Memory> {
        memory_of(self.pid).with_context(|| format!("reading the memory of {}", self.name))
    }

    /// SIGTERM, then SIGKILL after the grace period; waits for the exit.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await;
        match tokio::time::timeout(STOP_GRACE, self.child.wait()).await {
            Ok(status) => {
                status?;
            }
            Err(_) => {
                eprintln!("bench: {} ignored SIGTERM; killing it", self.name);
                self.child.kill().await?;
            }
        }
        Ok(())
    }
}

/// Current and peak resident memory of process `pid`.
pub fn memory_of(pid: u32) -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .map_or(0.0, |kb| kb / 1024.0)
    };
    Ok(Memory {
        rss_mb: field("VmRSS:"),
        peak_mb: field("VmHWM:"),
    })
}

/// A free port on 127.0.0.1 (bound and released; fine for a benchmark).
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}
