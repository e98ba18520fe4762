//! The suite's own PostgreSQL and RabbitMQ: a cluster made with `initdb` in a
//! temporary directory on a free port, and a RabbitMQ node with its own node
//! name, ports, cookie and data directory. Started, crashed, restarted and
//! stopped by the suite alone, so its faults disturb nothing else. A node
//! may be one of a cluster (`cluster::brokers`): then it gets the cluster's
//! `rabbitmq.conf` and Erlang cookie.

use std::{
    fs,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use testkit::free_port;

use crate::process::{kill_group, run};

/// A private PostgreSQL cluster.
pub struct Postgres {
    dir: PathBuf,
    bin: PathBuf,
    pub port: u16,
}

impl Postgres {
    /// `initdb` a cluster under `root` and start it.
    pub fn start(root: &Path) -> anyhow::Result<Self> {
        let bin = postgres_bin()?;
        let dir = root.join("postgres");
        fs::create_dir_all(&dir)?;
        if is_root() {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir))?;
        }
        let postgres = Self {
            dir,
            bin,
            port: free_port(),
        };
        postgres.pg(Command::new(postgres.bin.join("initdb"))
            .args([
                "-U",
                "tally",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(postgres.data()))?;
        postgres.start_server()?;
        Ok(postgres)
    }

    pub fn url(&self) -> String {
        self.url_of("postgres")
    }

    /// The URL of another database of the same server.
    pub fn url_of(&self, database: &str) -> String {
        format!("postgres://tally@127.0.0.1:{}/{database}", self.port)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start_server(&self) -> anyhow::Result<()> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
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
        self.pg(Command::new(self.bin.join("pg_ctl"))
            .args(["-m", "immediate", "-D"])
            .arg(self.data())
            .arg("stop"))
    }

    fn pg(&self, command: &mut Command) -> anyhow::Result<()> {
        if is_root() {
            let program = command.get_program().to_owned();
            let args: Vec<_> = command.get_args().map(ToOwned::to_owned).collect();
            run(Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(program)
                .args(args))
        } else {
            run(command)
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.crash();
    }
}

fn postgres_bin() -> anyhow::Result<PathBuf> {
    let mut versions: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (run scripts/services)")?
        .filter_map(|entry| entry.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort_by_key(|bin| {
        bin.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions
        .pop()
        .context("no initdb under /usr/lib/postgresql/*/bin")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A private RabbitMQ node.
pub struct Rabbit {
    dir: PathBuf,
    pub port: u16,
    dist_port: u16,
    node: String,
    child: Option<Child>,
}

impl Rabbit {
    /// Starts a node with its own name, ports and data under `root`.
    pub async fn start(root: &Path) -> anyhow::Result<Self> {
        let node = format!("tally-faults-{}@localhost", std::process::id());
        let mut rabbit = Self::prepare(root.join("rabbitmq"), node, free_port(), None)?;
        rabbit.start_node().await?;
        Ok(rabbit)
    }

    /// A node not yet started: its directory under `dir`, and, for a
    /// cluster's node, its `rabbitmq.conf` and the cluster's Erlang cookie.
    pub fn prepare(
        dir: PathBuf,
        node: String,
        port: u16,
        cluster: Option<(&str, &str)>,
    ) -> anyhow::Result<Self> {
        fs::create_dir_all(dir.join("home"))?;
        fs::write(dir.join("enabled_plugins"), "[].\n")?;
        if let Some((conf, cookie)) = cluster {
            fs::write(dir.join("rabbitmq.conf"), conf)?;
            let path = dir.join("home/.erlang.cookie");
            fs::write(&path, cookie)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o400))?;
        }
        Ok(Self {
            node,
            port,
            dist_port: free_port(),
            dir,
            child: None,
        })
    }

    /// The admin step: declares `queue`'s topology once, before any service
    /// starts. Services that find a queue missing declare it themselves; two
    /// doing so at once made RabbitMQ 3.10 give `tally.sums` two Raft
    /// servers, and after a crash seconds later the queue never had a
    /// leader again (seed 17494462230635224366: "leader not known").
    pub async fn declare_topology(&self, queue: &str) -> anyhow::Result<()> {
        let connection =
            lapin::Connection::connect(&self.url(), lapin::ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        proto::topology::declare(&channel, queue).await?;
        let _ = connection.close(200, "declared".into()).await;
        Ok(())
    }

    /// The Erlang node name (`name@localhost`).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Runs `rabbitmqctl -n <node> ARGS` with this node's cookie; its stdout.
    pub fn ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = Command::new(rabbitmqctl())
            .env("HOME", self.dir.join("home"))
            .args(["-q", "-t", "10", "-n", &self.node])
            .args(args)
            .output()
            .context("running rabbitmqctl")?;
        if !output.status.success() {
            bail!(
                "rabbitmqctl {args:?} on {}: {}",
                self.node,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Whether the node's process runs (it may still be booting).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Starts the node and waits until an AMQP connection succeeds.
    pub async fn start_node(&mut self) -> anyhow::Result<()> {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))?;
        let child = Command::new(rabbitmq_server())
            .current_dir(&self.dir)
            .env("HOME", self.dir.join("home"))
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", self.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.dir.join("log"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                self.dir.join("enabled_plugins"),
            )
            .env("RABBITMQ_CONFIG_FILE", self.dir.join("rabbitmq"))
            .env("RABBITMQ_PID_FILE", self.dir.join("pid"))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .context("starting rabbitmq-server (run scripts/services to install it)")?;
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(90) {
            // A booting node accepts TCP before it answers the handshake: bound
            // each attempt, or a start can hang for good.
            let url = self.url();
            let connecting =
                lapin::Connection::connect(&url, lapin::ConnectionProperties::default());
            let connected = tokio::time::timeout(Duration::from_secs(5), connecting).await;
            if let Ok(Ok(connection)) = connected {
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    connection.close(200, "ready".into()),
                )
                .await;
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        bail!(
            "the private RabbitMQ node did not start; see {}",
            self.dir.join("server.log").display()
        )
    }

    /// Kills the node with SIGKILL, like a crash.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(child.id(), "KILL");
            let _ = child.wait();
        }
    }

    /// Stops the node gracefully (SIGTERM), killing it if that takes too long.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(30) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            kill_group(child.id(), "KILL");
            let _ = child.wait();
        }
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        self.crash();
    }
}

fn rabbitmq_server() -> PathBuf {
    rabbitmq_bin("rabbitmq-server")
}

fn rabbitmqctl() -> PathBuf {
    rabbitmq_bin("rabbitmqctl")
}

fn rabbitmq_bin(name: &str) -> PathBuf {
    let direct = PathBuf::from("/usr/lib/rabbitmq/bin").join(name);
    if direct.exists() {
        direct
    } else {
        PathBuf::from(name)
    }
}
