//! The cluster mode's broker: three private RabbitMQ nodes forming one
//! cluster by classic-config peer discovery, with one Erlang cookie made
//! for the run, and Tally's queues declared as quorum queues with a member
//! on every node (`x-quorum-initial-group-size` 3). Knows which node leads
//! `tally.sums` (rabbitmqctl), and crashes, stops and restarts one node.

use std::path::Path;

use anyhow::Context;
use lapin::types::AMQPValue;
use testkit::free_port;

use crate::servers::Rabbit;

/// Nodes in the cluster.
pub const NODES: usize = 3;

/// The three nodes, by index.
pub struct Brokers {
    pub nodes: Vec<Rabbit>,
}

impl Brokers {
    /// Starts the first node, then the others (which join it), and declares
    /// the queues once all three are members.
    pub async fn start(root: &Path, queue: &str) -> anyhow::Result<Self> {
        let run = std::process::id();
        let names: Vec<String> = (1..=NODES)
            .map(|i| format!("tally-cluster-{run}-{i}@localhost"))
            .collect();
        // Node 1 seeds the cluster: it lists no peers, so it boots at once
        // (a blank node that lists peers first waits for them); nodes 2 and 3
        // discover it by classic config and join. A restarted node rejoins
        // from its own data.
        let mut joining =
            String::from("cluster_formation.peer_discovery_backend = classic_config\n");
        for (i, name) in names.iter().enumerate() {
            joining.push_str(&format!(
                "cluster_formation.classic_config.nodes.{} = {name}\n",
                i + 1
            ));
        }
        let cookie = format!("TALLYFAULTS{:016X}", crate::rng::Rng::fresh_seed());
        let mut nodes = Vec::new();
        for (i, name) in names.into_iter().enumerate() {
            let dir = root.join(format!("rabbitmq-{}", i + 1));
            let conf = if i == 0 { "" } else { joining.as_str() };
            nodes.push(Rabbit::prepare(
                dir,
                name,
                free_port(),
                Some((conf, &cookie)),
            )?);
        }
        let mut brokers = Self { nodes };
        brokers.nodes[0].start_node().await.context("node 1")?;
        if let [_, second, third] = &mut brokers.nodes[..] {
            let (second, third) = tokio::join!(second.start_node(), third.start_node());
            second.context("node 2")?;
            third.context("node 3")?;
        }
        brokers.await_members()?;
        brokers.declare(queue).await?;
        Ok(brokers)
    }

    /// Every node's AMQP URL (guest), comma-separated: an `AMQP_URL`.
    pub fn urls(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().map(Rabbit::url).collect();
        urls.join(",")
    }

    /// The URL of a running node, for the suite's own checks.
    pub fn any_url(&self) -> anyhow::Result<String> {
        self.nodes
            .iter()
            .find(|node| node.is_running())
            .map(Rabbit::url)
            .context("no broker node runs")
    }

    /// The index of the node leading `queue`, asked of a running node.
    pub fn leader(&self, queue: &str) -> anyhow::Result<usize> {
        let asked = self
            .nodes
            .iter()
            .find(|node| node.is_running())
            .context("no broker node runs")?;
        let listing = asked.ctl(&["list_queues", "name", "leader"])?;
        let leader = listing
            .lines()
            .filter_map(|line| line.split_once('\t'))
            .find(|(name, _)| *name == queue)
            .map(|(_, leader)| leader.trim().to_owned())
            .with_context(|| format!("{queue} is not listed: {listing}"))?;
        self.nodes
            .iter()
            .position(|node| node.node() == leader)
            .with_context(|| format!("{queue} is led by {leader}, not one of ours"))
    }

    /// Waits until the cluster has all three nodes running.
    fn await_members(&self) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        loop {
            let status = self.nodes[0].ctl(&["cluster_status", "--formatter", "json"])?;
            let running = self
                .nodes
                .iter()
                .filter(|node| running_nodes(&status).contains(&node.node().to_owned()))
                .count();
            if running == NODES {
                return Ok(());
            }
            anyhow::ensure!(
                started.elapsed() < std::time::Duration::from_secs(90),
                "only {running} of {NODES} nodes joined the cluster: {status}"
            );
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    }

    /// The admin step: `queue` and its dead-letter queue as
    /// `proto::topology` declares them, with a member on each node.
    async fn declare(&self, queue: &str) -> anyhow::Result<()> {
        let connection = lapin::Connection::connect(
            &self.nodes[0].url(),
            lapin::ConnectionProperties::default(),
        )
        .await?;
        let channel = connection.create_channel().await?;
        for spec in proto::topology::queues(queue) {
            let mut arguments = spec.field_table();
            arguments.insert(
                "x-quorum-initial-group-size".into(),
                AMQPValue::LongLongInt(NODES as i64),
            );
            let durable = lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            };
            channel
                .queue_declare(spec.name.as_str().into(), durable, arguments)
                .await
                .with_context(|| format!("declaring {}", spec.name))?;
        }
        let _ = connection.close(200, "declared".into()).await;
        Ok(())
    }
}

/// The `running_nodes` of `rabbitmqctl cluster_status --formatter json`.
fn running_nodes(status: &str) -> Vec<String> {
    serde_json::from_str::<serde_json::Value>(status)
        .ok()
        .and_then(|v| v.get("running_nodes").cloned())
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default()
}
