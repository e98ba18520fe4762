//! The main mode's own PostgreSQL and RabbitMQ: a server made with `initdb`
//! (`testkit::replicas`) in the run's directory on a free port, and a
//! RabbitMQ node with its own node name, ports and data directory. Started,
//! crashed, restarted and stopped by the suite alone, so its faults disturb
//! nothing else; both are guarded by `testkit::sentinel`.

use std::{
    fs,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use testkit::{
    free_port,
    replicas::{Server, Servers},
};

use crate::process::kill_group;

/// The suite's private PostgreSQL: one `testkit::replicas` server under
/// the run's directory (kept with it), crashed when dropped.
pub struct Postgres {
    server: Server,
    _servers: Servers,
}

impl Postgres {
    /// `initdb` a server under `root/postgres` and start it.
    pub fn start(root: &Path) -> anyhow::Result<Self> {
        let mut servers = Servers::in_dir(&root.join("postgres"))?;
        let server = servers.primary("postgres", &["max_connections = 200"])?;
        Ok(Self {
            server,
            _servers: servers,
        })
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The URL of another database of the same server.
    pub fn url_of(&self, database: &str) -> String {
        self.server.url_of(database)
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start_server(&self) -> anyhow::Result<()> {
        self.server.start()
    }

    /// Stops the server like a crash (`-m immediate`: no checkpoint).
    pub fn crash(&self) -> anyhow::Result<()> {
        self.server.crash()
    }
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
        let dir = root.join("rabbitmq");
        fs::create_dir_all(dir.join("home"))?;
        fs::write(dir.join("enabled_plugins"), "[].\n")?;
        let mut rabbit = Self {
            node: format!("tally-faults-{}@localhost", std::process::id()),
            port: free_port(),
            dist_port: free_port(),
            dir,
            child: None,
        };
        rabbit.start_node().await?;
        Ok(rabbit)
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
        let child = testkit::sentinel::guard(&mut Command::new(rabbitmq_server()))
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
    let direct = PathBuf::from("/usr/lib/rabbitmq/bin/rabbitmq-server");
    if direct.exists() {
        direct
    } else {
        PathBuf::from("rabbitmq-server")
    }
}
