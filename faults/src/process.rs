//! Child processes of the suite: the real `adder` and `totaler` binaries
//! (found next to the running executable in `target/<profile>/`), started,
//! SIGKILLed, SIGTERMed and restarted (each run a `testkit::process::Logged`,
//! killed when the `Service` drops); plus small process helpers.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};
use testkit::process::{Logged, NotReady};

/// How long a service may take to stop after SIGTERM (its own grace is 10 s).
const TERM_GRACE: Duration = Duration::from_secs(30);
/// How long a service may take to answer its `/healthz` after a start.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// One service binary and how to start it.
/// What a process holds at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resources {
    pub pid: u32,
    pub rss_kb: u64,
    pub fds: usize,
}

pub struct Service {
    pub name: String,
    binary: PathBuf,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Logged>,
    pub http: SocketAddr,
}

impl Service {
    pub fn new(
        name: &str,
        binary: PathBuf,
        env: Vec<(String, String)>,
        log_dir: &Path,
        http: SocketAddr,
    ) -> Self {
        Self {
            name: name.to_owned(),
            binary,
            env,
            log: log_dir.join(format!("{name}.log")),
            child: None,
            http,
        }
    }

    /// Starts the process and waits for its `/healthz`.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        self.start_with(&[]).await
    }

    /// Starts the process with `extra` added to its environment and waits
    /// (up to a minute) for its `/healthz`; a process that exits first is an
    /// error (and is no longer running).
    pub async fn start_with(&mut self, extra: &[(&str, &str)]) -> anyhow::Result<()> {
        self.spawn(extra)?;
        let child = self.child.as_mut().context("a service just spawned")?;
        match child
            .wait_ready(
                self.http,
                "/healthz",
                START_TIMEOUT,
                Duration::from_millis(100),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(NotReady::Exited(status)) => {
                self.child = None;
                bail!(
                    "{} exited at start with {status}; see {}",
                    self.name,
                    self.log.display()
                )
            }
            Err(NotReady::Io(e)) => Err(e).context(format!("polling {}", self.name)),
            Err(NotReady::Timeout) => bail!(
                "{} did not become healthy; see {}",
                self.name,
                self.log.display()
            ),
        }
    }

    /// Starts the process without waiting for anything.
    pub fn spawn(&mut self, extra: &[(&str, &str)]) -> anyhow::Result<()> {
        let child = Logged::spawn(
            Command::new(&self.binary)
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .envs(extra.iter().copied()),
            &self.log,
        )
        .with_context(|| format!("starting {}", self.binary.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// The exit status if the process has exited (it is then no longer running).
    pub fn exited(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        let status = child.try_wait()?;
        if status.is_some() {
            self.child = None;
        }
        Ok(status)
    }

    /// Waits up to `limit` for the process to exit by itself.
    pub async fn wait_exit(&mut self, limit: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if let Some(status) = self.exited()? {
                return Ok(Some(status));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(None)
    }

    /// The running process's resident memory (KiB) and open file
    /// descriptors, from `/proc`.
    pub fn resources(&self) -> Option<Resources> {
        let pid = self.child.as_ref()?.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rss_kb = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse().ok())?;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
        Some(Resources { pid, rss_kb, fds })
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL, no warning.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub async fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("{} is not running", self.name)
        };
        match child.terminate(TERM_GRACE).await? {
            Some(status) => Ok(status),
            None => bail!(
                "{} did not exit within {TERM_GRACE:?} of SIGTERM; killed it",
                self.name
            ),
        }
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }
}

/// What every service of a run gets: its broker, queue, logging and name.
pub fn service_env(name: &str, amqp_url: &str, queue: &str) -> Vec<(String, String)> {
    vec![
        ("AMQP_URL".to_owned(), amqp_url.to_owned()),
        ("TALLY_QUEUE".to_owned(), queue.to_owned()),
        ("RUST_LOG".to_owned(), "info".to_owned()),
        ("RUST_BACKTRACE".to_owned(), "0".to_owned()),
        ("OTEL_SERVICE_NAME".to_owned(), name.to_owned()),
    ]
}

/// An adder's additions to [`service_env`]: its outbox, its addresses, and
/// the run's commit writers and confirm timeout.
pub fn adder_env(
    database_url: &str,
    grpc: SocketAddr,
    http: SocketAddr,
    options: &crate::Options,
) -> [(String, String); 5] {
    [
        ("DATABASE_URL".to_owned(), database_url.to_owned()),
        ("ADDER_GRPC_ADDR".to_owned(), grpc.to_string()),
        ("ADDER_HTTP_ADDR".to_owned(), http.to_string()),
        (
            "ADDER_COMMIT_WRITERS".to_owned(),
            options.commit_writers.to_string(),
        ),
        (
            "ADDER_RELAY_CONFIRM_TIMEOUT_MS".to_owned(),
            (options.confirm_timeout_seconds * 1000).to_string(),
        ),
    ]
}

/// The path of a workspace binary built next to the running executable.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dirs = Vec::new();
    if let Ok(dir) = std::env::var("TALLY_BIN_DIR") {
        dirs.push(PathBuf::from(dir));
    }
    for ancestor in exe.ancestors().skip(1).take(2) {
        dirs.push(ancestor.to_path_buf());
    }
    dirs.iter()
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .with_context(|| {
            format!("no `{name}` binary in {dirs:?}; build it first (cargo build -p {name})")
        })
}

/// Runs a command to completion, failing with its output if it fails.
pub fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed with {}: {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Sends `signal` to the process group led by `pid`.
pub fn kill_group(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), "--", &format!("-{pid}")])
        .stderr(Stdio::null())
        .status();
}

pub use testkit::http::get as http_get;
