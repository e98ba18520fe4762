//! The broker as a service knows it: `AMQP_URL` is one URL or a
//! comma-separated list of them, one per node of a RabbitMQ cluster. A
//! connection goes to one node; the next connection attempt starts at the
//! node after the one last reached, so a service that lost its node moves to
//! another instead of waiting for the lost one, and a dead node costs at
//! most one connect timeout per reconnect. Every URL is checked when the
//! list is parsed (at start, before anything is bound); what is shown of a
//! node (logs, errors) is its host and port, never its credentials. Every
//! node names the same broker user (a cluster's users are cluster-wide): it
//! is the service's broker identity, which the relay writes into each
//! message's `user-id` for the broker to validate.
//!
//! A password may come from a file instead of the URLs (`AMQP_PASSWORD_FILE`,
//! a Docker secret): [`read_password_file`] reads it, [`Nodes::with_password`]
//! puts it into every node's URL; [`url_with_password`] does the same for
//! any URL of this shape (the adder's `DATABASE_URL`).
//!
//! Nothing here retries: a connection attempt walks the list once and the
//! caller's reconnect loop (with its backoff) walks it again.

use std::{
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use lapin::{Channel, Connection, uri::AMQPUri};

use crate::topology;

/// The broker's nodes, in the order given, and where the next connection
/// attempt starts. Clones share that position.
#[derive(Clone)]
pub struct Nodes {
    nodes: Arc<[Node]>,
    next: Arc<AtomicUsize>,
}

/// A node's URL (with credentials) and what may be shown of it.
struct Node {
    url: String,
    /// `host:port`.
    address: String,
    /// The broker user the URL logs in as.
    user: String,
}

/// Why `AMQP_URL` was refused; names the node by position, not by its URL
/// (which holds a password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("AMQP_URL lists no broker node")]
    Empty,
    #[error(
        "node {position} of AMQP_URL is not an AMQP URL (amqp://user:password@host:port/vhost)"
    )]
    NotAnAmqpUrl { position: usize },
    #[error("the nodes of AMQP_URL name different broker users: a service has one broker identity")]
    UsersDiffer,
    #[error(
        "node {position} of AMQP_URL has a password and a password file gives one too: give it once"
    )]
    PasswordTwice { position: usize },
    #[error("node {position} of AMQP_URL names no user for the password file's password")]
    NoUser { position: usize },
}

/// Why a URL cannot take a password from a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("the URL has a password and a password file gives one too: give it once")]
    Twice,
    #[error("the URL names no user for the password file's password")]
    NoUser,
}

/// A `*_PASSWORD_FILE` that gives no password; names the setting and the
/// file, never the file's content.
#[derive(Debug, thiserror::Error)]
pub enum PasswordFileError {
    #[error("{setting}: cannot read {}", path.display())]
    Unreadable {
        setting: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{setting}: {} is empty", path.display())]
    Empty {
        setting: &'static str,
        path: PathBuf,
    },
}

/// The node a connection was opened to.
pub struct Opened {
    pub connection: Connection,
    pub channel: Channel,
    /// `host:port` of the node, for logs.
    pub address: String,
}

impl Nodes {
    /// Connects to the first node that answers, starting after the one last
    /// reached, and opens a channel on which `queue`'s topology exists
    /// ([`topology::open`]). Every node is tried once; the error is the last
    /// node's, named by its address.
    pub async fn open(&self, queue: &str) -> Result<Opened, ConnectError> {
        let start = self.next.load(Ordering::Relaxed);
        let mut last = None;
        for step in 0..self.nodes.len() {
            let index = (start + step) % self.nodes.len();
            let node = &self.nodes[index];
            match topology::open(&node.url, queue).await {
                Ok((connection, channel)) => {
                    self.next.store(index + 1, Ordering::Relaxed);
                    return Ok(Opened {
                        connection,
                        channel,
                        address: node.address.clone(),
                    });
                }
                Err(error) => {
                    last = Some(ConnectError {
                        address: node.address.clone(),
                        tried: self.nodes.len(),
                        error,
                    })
                }
            }
        }
        self.next.store(start + 1, Ordering::Relaxed);
        Err(last.expect("a parsed list has at least one node"))
    }

    /// How many nodes are listed.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: parsing refuses an empty list.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The broker user every node is logged in to as.
    pub fn user(&self) -> &str {
        &self.nodes[0].user
    }

    /// The nodes' `host:port`, in order.
    pub fn addresses(&self) -> impl Iterator<Item = &str> {
        self.nodes.iter().map(|node| node.address.as_str())
    }

    /// The same nodes logging in with `password` (from a password file):
    /// each URL must name the user and no password.
    pub fn with_password(&self, password: &str) -> Result<Self, ParseError> {
        let nodes = self
            .nodes
            .iter()
            .enumerate()
            .map(|(index, node)| {
                let position = index + 1;
                let url = url_with_password(&node.url, password).map_err(|e| match e {
                    PasswordError::Twice => ParseError::PasswordTwice { position },
                    PasswordError::NoUser => ParseError::NoUser { position },
                })?;
                Node::parse(&url, position)
            })
            .collect::<Result<Arc<[Node]>, _>>()?;
        Ok(Self {
            nodes,
            next: Arc::default(),
        })
    }
}

/// The password in a `*_PASSWORD_FILE`: the file's text without its
/// trailing line break. A missing, unreadable or empty file is an error
/// naming `setting` and the file.
pub fn read_password_file(setting: &'static str, path: &Path) -> Result<String, PasswordFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| PasswordFileError::Unreadable {
        setting,
        path: path.to_owned(),
        source,
    })?;
    let password = text.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        return Err(PasswordFileError::Empty {
            setting,
            path: path.to_owned(),
        });
    }
    Ok(password.to_owned())
}

/// `scheme://user@hosts/...` with `password` put in after the user,
/// percent-encoded (so any character may be in the file). The URL must
/// name a user and no password.
pub fn url_with_password(url: &str, password: &str) -> Result<String, PasswordError> {
    let (scheme, rest) = url.split_once("://").ok_or(PasswordError::NoUser)?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (user, hosts) = rest[..end].rsplit_once('@').ok_or(PasswordError::NoUser)?;
    if user.contains(':') {
        return Err(PasswordError::Twice);
    }
    if user.is_empty() {
        return Err(PasswordError::NoUser);
    }
    let tail = &rest[end..];
    Ok(format!(
        "{scheme}://{user}:{}@{hosts}{tail}",
        percent_encode(password)
    ))
}

/// Every byte but RFC 3986's unreserved characters as `%XX`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// No node could be opened: the last one's error.
#[derive(Debug, thiserror::Error)]
#[error("{tried} broker node(s) tried, the last ({address}): {error}")]
pub struct ConnectError {
    pub address: String,
    pub tried: usize,
    #[source]
    pub error: lapin::Error,
}

impl ConnectError {
    /// Whether the broker refused for a missing right (see
    /// [`topology::is_access_refused`]).
    pub fn is_access_refused(&self) -> bool {
        topology::is_access_refused(&self.error)
    }
}

impl FromStr for Nodes {
    type Err = ParseError;

    fn from_str(list: &str) -> Result<Self, ParseError> {
        let nodes = list
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .enumerate()
            .map(|(index, url)| Node::parse(url, index + 1))
            .collect::<Result<Arc<[Node]>, _>>()?;
        if nodes.is_empty() {
            return Err(ParseError::Empty);
        }
        if nodes.iter().any(|node| node.user != nodes[0].user) {
            return Err(ParseError::UsersDiffer);
        }
        Ok(Self {
            nodes,
            next: Arc::default(),
        })
    }
}

impl Node {
    fn parse(url: &str, position: usize) -> Result<Self, ParseError> {
        let uri = AMQPUri::from_str(url).map_err(|_| ParseError::NotAnAmqpUrl { position })?;
        Ok(Self {
            url: url.to_owned(),
            address: format!("{}:{}", uri.authority.host, uri.authority.port),
            user: uri.authority.userinfo.username,
        })
    }
}

/// Shows the addresses only: `Nodes(10.0.0.1:5672, 10.0.0.2:5672)`.
impl fmt::Debug for Nodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Nodes({})",
            self.addresses().collect::<Vec<_>>().join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_gives_every_node_in_order() {
        let nodes: Nodes = "amqp://u:secret@a:5672/%2f, amqp://u:secret@b:5673/%2f,"
            .parse()
            .expect("two valid URLs");
        assert_eq!(nodes.addresses().collect::<Vec<_>>(), ["a:5672", "b:5673"]);
        assert_eq!(nodes.user(), "u");
    }

    #[test]
    fn every_node_must_name_the_same_broker_user() {
        let error = "amqp://u:secret@a:5672/%2f,amqp://v:secret@b:5672/%2f"
            .parse::<Nodes>()
            .expect_err("two users");
        assert_eq!(error, ParseError::UsersDiffer);
    }

    #[test]
    fn a_bad_node_is_named_by_position_without_its_password() {
        let error = "amqp://u:secret@a:5672/%2f,http://u:secret@b/"
            .parse::<Nodes>()
            .expect_err("http is not AMQP");
        assert_eq!(error, ParseError::NotAnAmqpUrl { position: 2 });
        assert!(!error.to_string().contains("secret"));
        assert_eq!(" , ".parse::<Nodes>().err(), Some(ParseError::Empty));
    }

    #[test]
    fn debug_output_holds_no_credentials() {
        let nodes: Nodes = "amqp://u:secret@a:5672/%2f".parse().expect("a valid URL");
        assert_eq!(format!("{nodes:?}"), "Nodes(a:5672)");
    }

    #[test]
    fn a_password_file_gives_every_node_its_password_percent_encoded() {
        let nodes: Nodes = "amqp://u@a:5672/%2f,amqp://u@b:5672/%2f"
            .parse()
            .expect("two valid URLs");
        let with = nodes
            .with_password("p@ss:w/rd%")
            .expect("users, no passwords");
        assert_eq!(with.addresses().collect::<Vec<_>>(), ["a:5672", "b:5672"]);
        assert_eq!(with.user(), "u");
        assert_eq!(format!("{with:?}"), "Nodes(a:5672, b:5672)");
        let url = url_with_password("amqp://u@a:5672/%2f", "p@ss:w/rd%").expect("a user");
        assert_eq!(url, "amqp://u:p%40ss%3Aw%2Frd%25@a:5672/%2f");
        let uri = AMQPUri::from_str(&url).expect("the driver reads it");
        assert_eq!(uri.authority.userinfo.password, "p@ss:w/rd%");
        assert_eq!(
            url_with_password("postgres://tally@pg1:5432,pg2:5432/tally?x=1", "s3cret"),
            Ok("postgres://tally:s3cret@pg1:5432,pg2:5432/tally?x=1".to_owned())
        );
    }

    #[test]
    fn a_password_file_is_refused_beside_a_password_or_without_a_user() {
        let nodes: Nodes = "amqp://u@a:5672/%2f,amqp://u:secret@b:5672/%2f"
            .parse()
            .expect("valid URLs");
        let error = nodes.with_password("p").expect_err("node 2 has one");
        assert_eq!(error, ParseError::PasswordTwice { position: 2 });
        assert!(!error.to_string().contains("secret"));
        assert_eq!(
            url_with_password("amqp://a:5672/%2f", "p"),
            Err(PasswordError::NoUser)
        );
        assert_eq!(
            url_with_password("postgres://u:x@a/db", "p"),
            Err(PasswordError::Twice)
        );
    }

    #[tokio::test]
    async fn a_dead_node_is_passed_over_and_the_next_attempt_starts_after_it() {
        // Two ports nothing listens on: both fail, each tried once, and the
        // next attempt starts one further along the list.
        let nodes: Nodes = format!(
            "amqp://u:p@127.0.0.1:{}/%2f,amqp://u:p@127.0.0.1:{}/%2f",
            1, 2
        )
        .parse()
        .expect("valid URLs");
        let error = nodes.open("q").await.err().expect("nothing listens");
        assert_eq!((error.tried, error.address.as_str()), (2, "127.0.0.1:2"));
        let error = nodes.open("q").await.err().expect("nothing listens");
        assert_eq!(
            error.address, "127.0.0.1:1",
            "the second attempt began at node 2"
        );
    }
}
