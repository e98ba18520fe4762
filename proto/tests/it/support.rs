//! The brokers these tests run against, and an administrator's view of them
//! through the management HTTP API: users, permissions, policies. The 3.x
//! broker is `TEST_AMQP_URL` (the host's, `scripts/services`); the 4.x broker
//! is `TEST_AMQP4_URL` or, when that is unset, the private 4.0 node that
//! `scripts/rabbitmq4 start` makes and starts. Both need the management API
//! (`TEST_RABBITMQ_API`, `TEST_RABBITMQ4_API`) with an administrator in the
//! URLs' credentials (guest on a test broker).

use std::{process::Command, sync::OnceLock, time::Duration};

use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions},
    types::FieldTable,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One test broker: its AMQP URL (as an administrator) and its HTTP API.
#[derive(Debug, Clone)]
pub struct Broker {
    pub amqp: String,
    pub api: String,
}

/// The RabbitMQ 3.x broker (the host's).
pub fn broker3() -> Broker {
    Broker {
        amqp: env_or("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
        api: env_or("TEST_RABBITMQ_API", "http://127.0.0.1:15672"),
    }
}

/// The RabbitMQ 4.x broker, started by `scripts/rabbitmq4` when not given.
pub fn broker4() -> Broker {
    static STARTED: OnceLock<String> = OnceLock::new();
    let amqp = match std::env::var("TEST_AMQP4_URL") {
        Ok(url) => url,
        Err(_) => STARTED.get_or_init(start_rabbitmq4).clone(),
    };
    Broker {
        amqp,
        api: env_or("TEST_RABBITMQ4_API", "http://127.0.0.1:15673"),
    }
}

fn start_rabbitmq4() -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/rabbitmq4");
    eprintln!("starting the RabbitMQ 4.0 test node: {script} start");
    let output = Command::new(script)
        .arg("start")
        .output()
        .expect("run scripts/rabbitmq4");
    assert!(
        output.status.success(),
        "scripts/rabbitmq4 start failed (set TEST_AMQP4_URL to use another 4.x broker):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// A queue name no other test uses.
pub fn unique_queue(test: &str) -> String {
    format!("test.{test}.{}", uuid::Uuid::new_v4().simple())
}

impl Broker {
    /// Connects as the administrator.
    pub async fn connect(&self) -> Connection {
        connect(&self.amqp).await
    }

    /// The AMQP URL of `user` with `password` on this broker.
    pub fn url_of(&self, user: &str, password: &str) -> String {
        let rest = self.amqp.split_once('@').expect("an amqp URL with user@").1;
        format!("amqp://{user}:{password}@{rest}")
    }

    /// The server's version, e.g. "4.0.5".
    pub async fn version(&self) -> String {
        let (status, body) = self.api("GET", "/api/overview", "").await;
        assert_eq!(status, 200, "GET /api/overview: {body}");
        let overview: serde_json::Value = serde_json::from_str(&body).expect("overview JSON");
        overview["rabbitmq_version"]
            .as_str()
            .expect("rabbitmq_version")
            .to_owned()
    }

    /// Creates `user` with `password` and the given rights on vhost `/`.
    pub async fn add_user(
        &self,
        user: &str,
        password: &str,
        rights: &proto::topology::Permissions,
    ) {
        let body = serde_json::json!({"password": password, "tags": ""}).to_string();
        let (status, text) = self.api("PUT", &format!("/api/users/{user}"), &body).await;
        assert!(
            status == 201 || status == 204,
            "create user {user}: {status} {text}"
        );
        let body = serde_json::json!({
            "configure": rights.configure, "write": rights.write, "read": rights.read,
        })
        .to_string();
        let path = format!("/api/permissions/%2f/{user}");
        let (status, text) = self.api("PUT", &path, &body).await;
        assert!(
            status == 201 || status == 204,
            "permissions of {user}: {status} {text}"
        );
    }

    pub async fn delete_user(&self, user: &str) {
        let _ = self.api("DELETE", &format!("/api/users/{user}"), "").await;
    }

    /// Sets policy `name` on vhost `/` and waits until `queue` shows it.
    pub async fn set_policy(&self, name: &str, queue: &str, definition: serde_json::Value) {
        let body = serde_json::json!({
            "pattern": format!("^{}$", queue.replace('.', "\\.")),
            "apply-to": "queues", "priority": 0, "definition": definition,
        })
        .to_string();
        let (status, text) = self
            .api("PUT", &format!("/api/policies/%2f/{name}"), &body)
            .await;
        assert!(
            status == 201 || status == 204,
            "policy {name}: {status} {text}"
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (_, text) = self
                .api("GET", &format!("/api/queues/%2f/{queue}"), "")
                .await;
            let info: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if info["policy"] == name {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{queue} never showed policy {name}: {text}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn clear_policy(&self, name: &str) {
        let _ = self
            .api("DELETE", &format!("/api/policies/%2f/{name}"), "")
            .await;
    }

    /// One HTTP/1.1 request to the management API as the URL's user.
    async fn api(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let host = self.api.trim_start_matches("http://").trim_end_matches('/');
        let credentials = self
            .amqp
            .trim_start_matches("amqp://")
            .split_once('@')
            .expect("credentials in the AMQP URL")
            .0;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Basic {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            base64(credentials.as_bytes()),
            body.len()
        );
        let mut stream = tokio::net::TcpStream::connect(host)
            .await
            .unwrap_or_else(|e| panic!("management API {host}: {e}"));
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.expect("receive");
        let response = String::from_utf8_lossy(&response).into_owned();
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .expect("an HTTP status line");
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or("");
        (status, body.to_owned())
    }
}

/// Connects to `url`.
pub async fn connect(url: &str) -> Connection {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("connect to the test broker: {e}"))
}

/// Messages ready in `queue` (a passive declare).
pub async fn count(connection: &Connection, queue: &str) -> u32 {
    let channel = connection.create_channel().await.expect("channel");
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let count = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .expect("passive declare")
        .message_count();
    let _ = channel.close(200, "counted".into()).await;
    count
}

/// Publishes `body` persistently to `queue` through the default exchange and
/// returns the confirm (or the error that closed the channel).
pub async fn publish(channel: &Channel, queue: &str, body: &[u8]) -> lapin::Result<bool> {
    publish_through(channel, "", queue, body).await
}

/// Publishes `body` persistently through `exchange` with `routing_key` and
/// returns the confirm (or the error that closed the channel).
pub async fn publish_through(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
) -> lapin::Result<bool> {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await?
        .await?;
    Ok(confirm.is_ack())
}

/// Deletes `queue` and its dead-letter queue.
pub async fn delete_topology(connection: &Connection, queue: &str) {
    let channel = connection.create_channel().await.expect("channel");
    for name in [queue.to_owned(), proto::topology::dead_letter_queue(queue)] {
        let _ = channel
            .queue_delete(name.as_str().into(), Default::default())
            .await;
    }
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}
