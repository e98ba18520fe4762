//! The failover mode's database: three PostgreSQL members under Patroni
//! with one etcd, run by `scripts/pg-cluster` (the operators' script, so the
//! suite tests what they run) in the run's directory on ports of its own.
//! Members are asked through Patroni's REST API what they are (`/primary`,
//! `/replica`, `/sync`), and lost the ways a database server is lost:
//! SIGKILL of the machine (Patroni and postmaster), a crash of PostgreSQL
//! under a dead Patroni (`pg_ctl -m immediate`), a crash under a live one,
//! a machine that hangs (SIGSTOP) with its connections open.

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use testkit::{process::Frozen, replicas::server_processes};

use crate::process::{http_get, run};

/// How many members the cluster has.
pub const MEMBERS: usize = 3;

/// The script that runs the cluster.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/pg-cluster");

/// A running Patroni cluster; `scripts/pg-cluster down` on drop.
pub struct Patroni {
    dir: PathBuf,
    /// The first member's PostgreSQL port; the others follow it.
    port: u16,
    /// The first member's REST port; the others follow it.
    rest: u16,
    etcd: u16,
}

/// What a member is, by its REST API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    /// A running replica; `sync` when it is the synchronous standby.
    Replica {
        sync: bool,
    },
    /// Not answering, or neither (starting, stopped, rewinding).
    Down,
}

impl Patroni {
    /// `scripts/pg-cluster up` under `root/pg-cluster`: etcd and the
    /// members, waited for until one is primary with a synchronous standby.
    pub fn start(root: &Path) -> anyhow::Result<Self> {
        let dir = root.join("pg-cluster");
        let (port, rest, etcd) = free_ranges()?;
        let patroni = Self {
            dir,
            port,
            rest,
            etcd,
        };
        patroni.script(&["up"]).context(
            "scripts/pg-cluster up (Patroni, etcd: installed by scripts/test when missing)",
        )?;
        Ok(patroni)
    }

    /// The adders' `DATABASE_URL`: every member, libpq's multi-host form.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = (0..MEMBERS)
            .map(|i| format!("127.0.0.1:{}", self.port + i as u16))
            .collect();
        format!(
            "postgres://tally:tally@{}/tally?target_session_attrs=read-write",
            hosts.join(",")
        )
    }

    /// Member `i` alone (for the suite's own reads).
    pub fn member_url(&self, i: usize) -> String {
        format!(
            "postgres://tally:tally@127.0.0.1:{}/tally",
            self.port + i as u16
        )
    }

    /// The member's name in the script (`pg1`..).
    pub fn name(i: usize) -> String {
        format!("pg{}", i + 1)
    }

    /// What member `i` says it is.
    pub async fn role(&self, i: usize) -> Role {
        let rest: SocketAddr = ([127, 0, 0, 1], self.rest + i as u16).into();
        // A frozen member's REST API accepts and never answers: bound it.
        let answers = async |path: &str| {
            tokio::time::timeout(Duration::from_secs(1), http_get(rest, path))
                .await
                .ok()
                .flatten()
                .is_some_and(|(s, _)| s == 200)
        };
        if answers("/primary").await {
            Role::Primary
        } else if answers("/replica").await {
            Role::Replica {
                sync: answers("/sync").await,
            }
        } else {
            Role::Down
        }
    }

    /// The member that is primary now, if exactly one says so.
    pub async fn primary(&self) -> Option<usize> {
        let mut primaries = Vec::new();
        for i in 0..MEMBERS {
            if self.role(i).await == Role::Primary {
                primaries.push(i);
            }
        }
        (primaries.len() == 1).then(|| primaries[0])
    }

    /// The synchronous standby now, if one is.
    pub async fn sync_standby(&self) -> Option<usize> {
        for i in 0..MEMBERS {
            if self.role(i).await == (Role::Replica { sync: true }) {
                return Some(i);
            }
        }
        None
    }

    /// Waits up to `limit` for a primary other than `not` (any, if `None`).
    pub async fn wait_primary(&self, not: Option<usize>, limit: Duration) -> Option<usize> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            match self.primary().await {
                Some(i) if Some(i) != not => return Some(i),
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        None
    }

    /// Waits up to `limit` for member `i` to run as a replica.
    pub async fn wait_replica(&self, i: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if matches!(self.role(i).await, Role::Replica { .. }) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        false
    }

    /// SIGKILL of member `i`'s Patroni and postmaster: the machine is lost.
    pub fn kill(&self, i: usize) -> anyhow::Result<()> {
        self.script(&["kill", &Self::name(i)])
    }

    /// SIGKILL of member `i`'s Patroni alone, then `pg_ctl -m immediate` on
    /// its PostgreSQL: the server crashes with nobody left to restart it.
    pub fn crash_unmanaged(&self, i: usize) -> anyhow::Result<()> {
        let pid_file = self.dir.join(format!("{}.pid", Self::name(i)));
        let pid = std::fs::read_to_string(&pid_file)
            .with_context(|| format!("reading {}", pid_file.display()))?;
        run(Command::new("kill").args(["-KILL", pid.trim()]))?;
        std::fs::remove_file(&pid_file)?;
        self.crash(i)
    }

    /// SIGSTOP to member `i`'s Patroni, postmaster and every backend: a
    /// machine that hangs with its connections open (nothing is refused or
    /// reset; queries just get no answer). SIGCONT when the guard drops.
    pub fn freeze(&self, i: usize) -> anyhow::Result<Frozen> {
        let mut pids = Vec::new();
        let pid_file = self.dir.join(format!("{}.pid", Self::name(i)));
        if let Ok(pid) = std::fs::read_to_string(&pid_file) {
            pids.push(pid.trim().parse()?);
        }
        pids.extend(server_processes(
            &self.dir.join(Self::name(i)).join("data"),
        )?);
        Ok(Frozen::stop(pids)?)
    }

    /// `pg_ctl -m immediate` on member `i`'s PostgreSQL; Patroni stays.
    pub fn crash(&self, i: usize) -> anyhow::Result<()> {
        self.script(&["crash", &Self::name(i)])
    }

    /// Starts member `i` (Patroni, which starts PostgreSQL) again.
    pub fn start_member(&self, i: usize) -> anyhow::Result<()> {
        self.script(&["start", &Self::name(i)])
    }

    /// `patronictl list`, for the log.
    pub fn status(&self) -> String {
        self.command(&["status"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    fn script(&self, args: &[&str]) -> anyhow::Result<()> {
        run(&mut self.command(args))
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("bash");
        testkit::sentinel::guard(&mut command)
            .arg(SCRIPT)
            .args(args)
            .env("PG_CLUSTER_DIR", &self.dir)
            .env("PG_CLUSTER_PORT", self.port.to_string())
            .env("PG_CLUSTER_REST_PORT", self.rest.to_string())
            .env("PG_CLUSTER_ETCD_PORT", self.etcd.to_string());
        command
    }
}

impl Drop for Patroni {
    fn drop(&mut self) {
        if let Err(e) = self.script(&["down"]) {
            eprintln!("faults failover: scripts/pg-cluster down failed: {e:#}");
        }
    }
}

/// Three runs of consecutive free ports below the kernel's ephemeral range
/// (so `free_port` never hands them out): members, REST APIs, etcd (client
/// and peer).
fn free_ranges() -> anyhow::Result<(u16, u16, u16)> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    let seed = u64::from(std::process::id()) ^ now;
    let free =
        |base: u16, n: u16| (0..n).all(|k| TcpListener::bind(("127.0.0.1", base + k)).is_ok());
    let mut found = Vec::new();
    for attempt in 0..2000u64 {
        let base =
            20_000 + ((seed.wrapping_mul(6364136223846793005) + attempt * 7919) % 12_000) as u16;
        if free(base, 3) && !found.iter().any(|&b: &u16| b.abs_diff(base) < 3) {
            found.push(base);
            if found.len() == 3 {
                return Ok((found[0], found[1], found[2]));
            }
        }
    }
    bail!("no three runs of three free ports between 20000 and 32000")
}
