//! Private PostgreSQL servers for replication tests: a primary made with
//! `initdb` in a temporary directory on a free port, standbys streaming
//! from it (`pg_basebackup -R`), base backups restored as servers of their
//! own; each crashed (`pg_ctl -m immediate`), frozen (SIGSTOP), promoted or
//! stopped by the test alone, so nothing else is disturbed. When the tests run as root the
//! server commands run as the `postgres` user (PostgreSQL refuses root).
//! Role `tally`, trust authentication, database `postgres`. The fault
//! suite's private server is one of these too, in its run's directory.
//! Every server is guarded (`sentinel`): a test that dies stops it.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

use crate::{
    free_port,
    process::{Frozen, children},
};

/// One private PostgreSQL server and its data directory.
pub struct Server {
    dir: PathBuf,
    bin: PathBuf,
    pub port: u16,
}

/// A directory for a test's servers; on drop the servers are crashed and
/// the directory removed (unless it is the caller's: [`Servers::in_dir`]).
pub struct Servers {
    root: PathBuf,
    started: Vec<PathBuf>,
    bin: PathBuf,
    keep: bool,
}

impl Servers {
    /// Servers in a new temporary directory of their own.
    pub fn new(test: &str) -> anyhow::Result<Self> {
        let root = std::env::temp_dir().join(format!("tally-{test}-{}", uuid::Uuid::new_v4()));
        Self::create(root, false)
    }

    /// Servers in `dir` (created), which stays when they are dropped: the
    /// caller keeps their logs and data for inspection.
    pub fn in_dir(dir: &Path) -> anyhow::Result<Self> {
        Self::create(dir.to_path_buf(), true)
    }

    fn create(root: PathBuf, keep: bool) -> anyhow::Result<Self> {
        fs::create_dir_all(&root)?;
        let servers = Self {
            root,
            started: Vec::new(),
            bin: postgres_bin()?,
            keep,
        };
        servers.own(&servers.root)?;
        Ok(servers)
    }

    /// A new primary: `initdb`, started; `settings` go to postgresql.conf
    /// (after `max_connections = 100`, which they may raise).
    pub fn primary(&mut self, name: &str, settings: &[&str]) -> anyhow::Result<Server> {
        let server = self.server(name)?;
        server.pg(Command::new(self.bin.join("initdb"))
            .args([
                "-U",
                "tally",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(server.data()))?;
        server.configure(&["max_connections = 100"])?;
        server.configure(settings)?;
        server.start()?;
        Ok(server)
    }

    /// A streaming standby of `primary` (`pg_basebackup -R`), started; its
    /// WAL receiver reports as `name` (for `synchronous_standby_names`).
    pub fn standby(&mut self, name: &str, primary: &Server) -> anyhow::Result<Server> {
        let server = self.copy_of(name, primary)?;
        fs::write(server.data().join("standby.signal"), "")?;
        server.configure(&[&format!(
            "primary_conninfo = 'host=127.0.0.1 port={} user=tally application_name={name}'",
            primary.port
        )])?;
        server.start()?;
        Ok(server)
    }

    /// A base backup (`backup`), restored as a new server on `port` that
    /// recovers to the end of the backup's WAL and then opens on a new
    /// timeline, as a point-in-time restore does (`recovery.signal`); started.
    pub fn restored(&mut self, name: &str, backup: &Path, port: u16) -> anyhow::Result<Server> {
        let mut server = self.server(name)?;
        server.port = port;
        let copied = Command::new("cp")
            .arg("-a")
            .arg(backup)
            .arg(server.data())
            .status()?;
        if !copied.success() {
            bail!("copying the base backup {} failed", backup.display());
        }
        fs::write(server.data().join("recovery.signal"), "")?;
        server.configure(&["restore_command = 'false'"])?;
        server.start()?;
        Ok(server)
    }

    /// A base backup of `primary` (WAL included), kept for [`Servers::restored`].
    pub fn backup(&mut self, name: &str, primary: &Server) -> anyhow::Result<PathBuf> {
        let dir = self.root.join(name);
        fs::create_dir_all(&dir)?;
        self.own(&dir)?;
        let data = dir.join("data");
        self.basebackup(primary, &data)?;
        Ok(data)
    }

    fn copy_of(&mut self, name: &str, primary: &Server) -> anyhow::Result<Server> {
        let server = self.server(name)?;
        self.basebackup(primary, &server.data())?;
        Ok(server)
    }

    fn basebackup(&self, primary: &Server, data: &Path) -> anyhow::Result<()> {
        primary.pg(Command::new(self.bin.join("pg_basebackup"))
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "tally",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ])
            .arg(format!("--port={}", primary.port))
            .arg("-D")
            .arg(data))
    }

    fn server(&mut self, name: &str) -> anyhow::Result<Server> {
        let dir = self.root.join(name);
        fs::create_dir_all(&dir)?;
        self.own(&dir)?;
        self.started.push(dir.join("data"));
        Ok(Server {
            dir,
            bin: self.bin.clone(),
            port: free_port(),
        })
    }

    fn own(&self, dir: &Path) -> anyhow::Result<()> {
        if is_root() {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir))?;
        }
        Ok(())
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for data in &self.started {
            let _ = as_postgres(
                Command::new(self.bin.join("pg_ctl"))
                    .args(["-m", "immediate", "-D"])
                    .arg(data)
                    .arg("stop"),
            );
        }
        if !self.keep {
            let _ = fs::remove_dir_all(&self.root);
        }
    }
}

impl Server {
    /// The URL of database `postgres` on this server alone.
    pub fn url(&self) -> String {
        self.url_of("postgres")
    }

    /// The URL of another database of this server.
    pub fn url_of(&self, database: &str) -> String {
        format!("postgres://tally@127.0.0.1:{}/{database}", self.port)
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&self) -> anyhow::Result<()> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.display()
        );
        self.pg(Command::new(self.bin.join("pg_ctl"))
            .args(["-w", "-t", "60", "-o", &options, "-l"])
            .arg(self.dir.join("server.log"))
            .arg("-D")
            .arg(self.data())
            .arg("start"))
    }

    /// Stops the server like a crash (`-m immediate`: no checkpoint).
    pub fn crash(&self) -> anyhow::Result<()> {
        self.pg_ctl("stop", &["-m", "immediate"])
    }

    /// Stops the server cleanly (`-m fast`).
    pub fn stop(&self) -> anyhow::Result<()> {
        self.pg_ctl("stop", &["-m", "fast"])
    }

    /// Stops the postmaster and every backend with SIGSTOP: a server that
    /// hangs with its connections open; SIGCONT when the guard drops.
    pub fn freeze(&self) -> anyhow::Result<Frozen> {
        Ok(Frozen::stop(server_processes(&self.data())?)?)
    }

    /// Promotes a standby to primary (a new timeline) and waits for it.
    pub fn promote(&self) -> anyhow::Result<()> {
        self.pg_ctl("promote", &["-w"])
    }

    /// Appends `settings` to postgresql.conf; [`Server::reload`] applies them.
    pub fn configure(&self, settings: &[&str]) -> anyhow::Result<()> {
        let conf = self.data().join("postgresql.conf");
        let mut text = fs::read_to_string(&conf).context("reading postgresql.conf")?;
        for setting in settings {
            text.push_str(setting);
            text.push('\n');
        }
        fs::write(&conf, text).context("writing postgresql.conf")
    }

    pub fn reload(&self) -> anyhow::Result<()> {
        self.pg_ctl("reload", &[])
    }

    fn pg_ctl(&self, action: &str, options: &[&str]) -> anyhow::Result<()> {
        self.pg(Command::new(self.bin.join("pg_ctl"))
            .args(options)
            .arg("-D")
            .arg(self.data())
            .arg(action))
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn pg(&self, command: &mut Command) -> anyhow::Result<()> {
        as_postgres(command)
    }
}

/// Runs `command`, as the `postgres` user when we are root.
fn as_postgres(command: &mut Command) -> anyhow::Result<()> {
    if !is_root() {
        return run(command);
    }
    let program = command.get_program().to_owned();
    let args: Vec<_> = command.get_args().map(ToOwned::to_owned).collect();
    run(Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(program)
        .args(args))
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = crate::sentinel::guard(command)
        .output()
        .with_context(|| format!("running {:?}", command.get_program()))?;
    if !output.status.success() {
        bail!(
            "{:?} failed: {}{}",
            command.get_program(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// The newest PostgreSQL's bin directory under /usr/lib/postgresql.
fn postgres_bin() -> anyhow::Result<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (run scripts/services)")?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .context("no initdb under /usr/lib/postgresql/*/bin")
}

fn is_root() -> bool {
    // The effective uid (the third field of Uid:).
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// The postmaster of the server in data directory `data` (from its
/// `postmaster.pid`) and its children, every backend: what a hung machine
/// stops.
pub fn server_processes(data: &Path) -> anyhow::Result<Vec<u32>> {
    let pid_file = data.join("postmaster.pid");
    let text =
        fs::read_to_string(&pid_file).with_context(|| format!("reading {}", pid_file.display()))?;
    let postmaster: u32 = text.lines().next().unwrap_or_default().trim().parse()?;
    let mut pids = vec![postmaster];
    pids.extend(children(postmaster));
    Ok(pids)
}
