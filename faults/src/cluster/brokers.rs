//! The cluster mode's broker: three RabbitMQ nodes in one cluster, run by
//! `scripts/cluster brokers` (the operators' script, so the suite tests
//! what they run) in the run's directory, on ports and node names of its
//! own; Tally's queues are quorum queues with a member on every node, as
//! the script's admin step declares them. Knows which node leads
//! `tally.sums` (the management API), and crashes, stops and restarts one
//! node through the script.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context;

use crate::process::run;

/// Nodes in the cluster.
pub const NODES: usize = 3;

/// The script that runs the cluster.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/cluster");
/// Ports the script uses above its base (see the header of scripts/cluster).
const PORT_SPAN: u16 = 80;

/// The three nodes, by index; `scripts/cluster down` on drop.
pub struct Brokers {
    dir: PathBuf,
    name: String,
    base: u16,
    running: [bool; NODES],
}

impl Brokers {
    /// `scripts/cluster brokers` under `root/cluster`: the nodes form one
    /// cluster and the queues are declared on all three.
    pub fn start(root: &Path) -> anyhow::Result<Self> {
        let brokers = Self {
            dir: root.join("cluster"),
            name: format!("tally-faults-{}", std::process::id()),
            base: testkit::free_port_block(PORT_SPAN)?,
            running: [true; NODES],
        };
        brokers
            .script(&["brokers"])
            .context("scripts/cluster brokers")?;
        Ok(brokers)
    }

    /// Node `i`'s AMQP URL (guest, loopback only).
    pub fn url(&self, i: usize) -> String {
        format!(
            "amqp://guest:guest@127.0.0.1:{}/%2f",
            self.base + 41 + i as u16
        )
    }

    /// Every node's AMQP URL, comma-separated: an `AMQP_URL`.
    pub fn urls(&self) -> String {
        let urls: Vec<String> = (0..NODES).map(|i| self.url(i)).collect();
        urls.join(",")
    }

    /// The URL of a running node, for the suite's own checks.
    pub fn any_url(&self) -> Option<String> {
        self.running_node().map(|i| self.url(i))
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.running[i]
    }

    /// The index of the node leading `queue`, asked of a running node's
    /// management API.
    pub fn leader(&self, queue: &str) -> anyhow::Result<usize> {
        let asked = self.running_node().context("no broker node runs")?;
        let url = format!(
            "http://127.0.0.1:{}/api/queues/%2f/{queue}",
            self.base + 61 + asked as u16
        );
        let output = Command::new("curl")
            .args(["-fsS", "-m", "10", "-u", "guest:guest", &url])
            .output()
            .context("running curl")?;
        anyhow::ensure!(
            output.status.success(),
            "GET {url}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        let body: serde_json::Value = serde_json::from_slice(&output.stdout)?;
        let leader = body
            .get("leader")
            .and_then(|l| l.as_str())
            .with_context(|| format!("{queue} has no leader: {body}"))?;
        (0..NODES)
            .find(|&i| leader == self.node(i))
            .with_context(|| format!("{queue} is led by {leader}, not one of ours"))
    }

    /// SIGKILL to node `i`'s whole process group, like a crash.
    pub fn crash(&mut self, i: usize) -> anyhow::Result<()> {
        self.running[i] = false;
        self.script(&["kill", &component(i)])
    }

    /// Stops node `i` gracefully (SIGTERM; SIGKILL after 30 s).
    pub fn stop(&mut self, i: usize) -> anyhow::Result<()> {
        self.running[i] = false;
        self.script(&["stop", &component(i)])
    }

    /// Starts node `i` again and waits until it has booted; it rejoins
    /// the cluster from its own data.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.script(&["start", &component(i)])?;
        self.running[i] = true;
        Ok(())
    }

    /// Node `i`'s Erlang node name.
    fn node(&self, i: usize) -> String {
        format!("{}-{}@localhost", self.name, i + 1)
    }

    fn running_node(&self) -> Option<usize> {
        (0..NODES).find(|&i| self.running[i])
    }

    fn script(&self, args: &[&str]) -> anyhow::Result<()> {
        run(testkit::sentinel::guard(&mut Command::new(SCRIPT))
            .args(args)
            .env("CLUSTER_DIR", &self.dir)
            .env("CLUSTER_NAME", &self.name)
            .env("CLUSTER_PORT_BASE", self.base.to_string())
            .env_remove("RABBITMQ_ERLANG_COOKIE_FILE"))
    }
}

impl Drop for Brokers {
    fn drop(&mut self) {
        if let Err(e) = self.script(&["down"]) {
            eprintln!("faults cluster: scripts/cluster down failed: {e:#}");
        }
    }
}

/// Node `i`'s name in the script.
fn component(i: usize) -> String {
    format!("rabbit-{}", i + 1)
}
