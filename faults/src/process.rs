//! Child processes of the suite: the real `adder` and `totaler` binaries
//! (found next to the running executable in `target/<profile>/`), started,
//! SIGKILLed, SIGTERMed and restarted; plus small process helpers.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};

/// How long a service may take to stop after SIGTERM (its own grace is 10 s).
const TERM_GRACE: Duration = Duration::from_secs(30);

/// One service binary and how to start it.
pub struct Service {
    pub name: String,
    binary: PathBuf,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
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
    /// for its `/healthz`; a process that exits first is an error (and is
    /// no longer running).
    pub async fn start_with(&mut self, extra: &[(&str, &str)]) -> anyhow::Result<()> {
        self.spawn(extra)?;
        for _ in 0..600 {
            if http_get(self.http, "/healthz")
                .await
                .is_some_and(|(status, _)| status == 200)
            {
                return Ok(());
            }
            if let Some(status) = self.exited()? {
                bail!(
                    "{} exited at start with {status}; see {}",
                    self.name,
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "{} did not become healthy; see {}",
            self.name,
            self.log.display()
        )
    }

    /// Starts the process without waiting for anything.
    pub fn spawn(&mut self, extra: &[(&str, &str)]) -> anyhow::Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.binary)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
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

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL, no warning.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub async fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("{} is not running", self.name)
        };
        run(Command::new("kill").args(["-TERM", &child.id().to_string()]))?;
        for _ in 0..(TERM_GRACE.as_millis() / 50) {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!(
            "{} did not exit within {TERM_GRACE:?} of SIGTERM; killed it",
            self.name
        )
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
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
