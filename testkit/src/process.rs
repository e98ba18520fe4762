//! Child processes: [`Logged`], a real binary started with its output
//! appended to a log file, waited for until an HTTP path answers, stopped
//! with SIGTERM and a grace period, and SIGKILLed when dropped (so an
//! aborted test or run leaves nothing behind); and waiting for a child with
//! a deadline: a test that waits on a child process must fail, not hang,
//! when the process does not exit in time; and [`Frozen`] processes
//! (SIGSTOP), a server that hangs with its connections open.

use std::{
    fs::OpenOptions,
    io,
    net::SocketAddr,
    path::Path,
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

/// A running child whose stdout and stderr go to a log file.
#[derive(Debug)]
pub struct Logged {
    child: Child,
}

/// Why [`Logged::wait_ready`] gave up.
#[derive(Debug)]
pub enum NotReady {
    /// The process exited first, with this status.
    Exited(ExitStatus),
    /// The path did not answer 200 in time.
    Timeout,
    /// The process could not be polled.
    Io(io::Error),
}

impl Logged {
    /// Spawns `command` with stdin closed and its output appended to `log`,
    /// guarded (`sentinel`): it is stopped if the test process dies.
    pub fn spawn(command: &mut Command, log: &Path) -> io::Result<Self> {
        let out = OpenOptions::new().create(true).append(true).open(log)?;
        let child = crate::sentinel::guard(command)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        Ok(Self { child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has exited.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Polls `GET path` on `addr` every `every` until it answers 200, the
    /// process exits, or `timeout` passes.
    pub async fn wait_ready(
        &mut self,
        addr: SocketAddr,
        path: &str,
        timeout: Duration,
        every: Duration,
    ) -> Result<(), NotReady> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if crate::http::get(addr, path)
                .await
                .is_some_and(|(status, _)| status == 200)
            {
                return Ok(());
            }
            if let Some(status) = self.try_wait().map_err(NotReady::Io)? {
                return Err(NotReady::Exited(status));
            }
            tokio::time::sleep(every).await;
        }
        Err(NotReady::Timeout)
    }

    /// SIGKILL, no warning; reaps the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits up to `grace` for the exit (polling every 50 ms);
    /// past it, SIGKILLs the process and returns `None`.
    pub async fn terminate(&mut self, grace: Duration) -> io::Result<Option<ExitStatus>> {
        signal(self.pid(), "TERM")?;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill();
        Ok(None)
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

/// Sends `SIG{name}` to `pid` with kill(1), failing if kill does.
pub fn signal(pid: u32, name: &str) -> io::Result<()> {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("kill -{name} {pid}: {status}")))
    }
}

/// Processes stopped with SIGSTOP, as a machine that hangs: their sockets
/// stay open and the kernel still accepts connections, but nothing is
/// answered. SIGCONT at [`Frozen::thaw`] or on drop.
#[derive(Debug)]
pub struct Frozen {
    pids: Vec<u32>,
}

impl Frozen {
    /// SIGSTOP to each of `pids`, in order.
    pub fn stop(pids: Vec<u32>) -> io::Result<Self> {
        for &pid in &pids {
            signal(pid, "STOP")?;
        }
        Ok(Self { pids })
    }

    /// SIGCONT to each, in reverse order.
    pub fn thaw(mut self) -> io::Result<()> {
        self.cont()
    }

    fn cont(&mut self) -> io::Result<()> {
        let mut result = Ok(());
        for pid in self.pids.drain(..).rev() {
            if let Err(e) = signal(pid, "CONT") {
                result = Err(e);
            }
        }
        result
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = self.cont();
    }
}

/// The processes whose parent is `parent` (from `/proc`).
pub fn children(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    // The fields after the command name, which is in parentheses.
                    let rest = stat.rsplit_once(')')?.1;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

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
    signal(pid, "TERM").expect("kill -TERM");
}
