//! A TCP proxy in front of a real server that a test can cut and restore:
//! `cut` drops every open connection and refuses new ones, as if the server
//! went down; `restore` lets connections through again. `hold_replies`
//! keeps forwarding what clients send but holds back what the server
//! answers (a broker's confirms, say) until `release_replies`. `refused`
//! counts the connections turned away while cut: evidence that a client
//! really tried during the outage.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::watch,
    task::JoinHandle,
};

/// A running proxy.
pub struct Proxy {
    pub addr: SocketAddr,
    up: watch::Sender<bool>,
    replies: watch::Sender<bool>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    refused: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on `127.0.0.1:0` and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (up, _) = watch::channel(true);
        let (replies, _) = watch::channel(true);
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let refused: Arc<AtomicUsize> = Arc::default();
        let accept = tokio::spawn(accept_loop(
            listener,
            target,
            (up.subscribe(), replies.subscribe()),
            tasks.clone(),
            refused.clone(),
        ));
        Self {
            addr,
            up,
            replies,
            tasks,
            refused,
            accept,
        }
    }

    /// Connections turned away while the proxy was cut.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::Relaxed)
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.up.send_replace(false);
        for task in self.tasks.lock().expect("proxy tasks").drain(..) {
            task.abort();
        }
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.up.send_replace(true);
    }

    /// Holds back every byte the server sends until `release_replies`.
    pub fn hold_replies(&self) {
        self.replies.send_replace(false);
    }

    /// Delivers the held replies and forwards freely again.
    pub fn release_replies(&self) {
        self.replies.send_replace(true);
    }

    /// `url` with its host and port replaced by the proxy's.
    pub fn url(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let userinfo = authority
            .rsplit_once('@')
            .map(|(user, _)| format!("{user}@"))
            .unwrap_or_default();
        format!("{scheme}://{userinfo}{}/{path}", self.addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    (up, replies): (watch::Receiver<bool>, watch::Receiver<bool>),
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    refused: Arc<AtomicUsize>,
) {
    while let Ok((client, _)) = listener.accept().await {
        if !*up.borrow() {
            refused.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let replies = replies.clone();
        let task = tokio::spawn(async move {
            if let Ok(server) = TcpStream::connect(target).await {
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                let always = watch::channel(true).1;
                tokio::select! {
                    () = forward(client_read, server_write, always) => {}
                    () = forward(server_read, client_write, replies) => {}
                }
            }
        });
        tasks.lock().expect("proxy tasks").push(task);
    }
}

/// Copies `from` to `to`, waiting before each write while `open` is false.
async fn forward(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut open: watch::Receiver<bool>) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if open.wait_for(|open| *open).await.is_err() || to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

/// The `host:port` of a URL, resolved.
pub fn target_of(url: &str) -> SocketAddr {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    std::net::ToSocketAddrs::to_socket_addrs(host_port)
        .expect("resolve the server")
        .next()
        .expect("an address")
}
