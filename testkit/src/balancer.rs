//! A gRPC balancer for tests and benchmarks (the fault suite's cluster
//! mode, `bench --scale-out`): Debian's HAProxy in front of the adders,
//! spreading requests (not connections) over them over h2c, taking an
//! adder out when its `/readyz` fails. It retries a request on another
//! adder only when its connection could not be made (`retry-on
//! conn-failure`): a request that reached an adder may have been committed,
//! and an id-less Add sent twice would be counted twice.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::free_port;

/// A running HAProxy.
pub struct Balancer {
    pub port: u16,
    child: std::process::Child,
}

/// One adder behind the balancer: its gRPC and HTTP (health) addresses.
pub struct Backend {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
}

impl Balancer {
    /// Writes the config under `dir` and starts HAProxy in the foreground.
    pub async fn start(dir: &Path, backends: &[Backend]) -> anyhow::Result<Self> {
        let port = free_port();
        let config = dir.join("haproxy.cfg");
        std::fs::write(&config, config_text(port, backends))?;
        let log = std::fs::File::create(dir.join("haproxy.log"))?;
        let child = crate::sentinel::guard(&mut Command::new(haproxy()))
            .args(["-db", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting haproxy (scripts/test installs Debian's haproxy)")?;
        let balancer = Self { port, child };
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if started.elapsed() > Duration::from_secs(10) {
                bail!("haproxy did not listen on {port}; see haproxy.log");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(balancer)
    }

    /// The gRPC address clients call.
    pub fn grpc(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// HAProxy's configuration: an h2c frontend, the adders as h2 servers
/// checked on `/readyz` every 500 ms (out after 2 failures, back after 1).
fn config_text(port: u16, backends: &[Backend]) -> String {
    let mut text = format!(
        "global\n  maxconn 4096\n\
         defaults\n  mode http\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n\
         \x20 retries 2\n  retry-on conn-failure\n  option redispatch\n\
         frontend grpc\n  bind 127.0.0.1:{port} proto h2\n  default_backend adders\n\
         backend adders\n  balance roundrobin\n  option httpchk GET /readyz\n"
    );
    for (i, backend) in backends.iter().enumerate() {
        text.push_str(&format!(
            "  server adder-{} {} proto h2 check check-proto h1 port {} inter 500ms fall 2 rise 1\n",
            i + 1,
            backend.grpc,
            backend.http.port()
        ));
    }
    text
}

fn haproxy() -> &'static str {
    if Path::new("/usr/sbin/haproxy").exists() {
        "/usr/sbin/haproxy"
    } else {
        "haproxy"
    }
}
