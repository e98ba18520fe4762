//! The servers' limits against slow and hostile clients: gRPC streams per
//! connection and call time, gRPC connections that do not speak (no
//! handshake, no call, no answer to PINGs), HTTP header-read and request
//! time, and the accept loop's back-off when the process runs out of file
//! descriptors.

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use testkit::{database, free_port};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tonic::Code;

use crate::support::{call, config, outbox_counts, pool, spawn_adder, wait_for_http};

/// An Add request on a raw HTTP/2 stream whose body is never sent, so the
/// stream stays open on the server.
fn open_add_request(addr: SocketAddr) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/tally.v1.Adder/Add"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("a request")
}

#[tokio::test]
async fn grpc_announces_its_stream_limit_and_a_client_cannot_open_more() {
    let db = database::fresh().await;
    let mut config = config(&db, &testkit::amqp_url(), &testkit::unique_queue("streams"));
    config.limits.grpc_max_streams = 2;
    let adder = spawn_adder(config).await;
    let tcp = TcpStream::connect(adder.grpc).await.expect("connect");
    let (send, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(connection);
    let mut send = send.ready().await.expect("ready");
    let deadline = Instant::now() + Duration::from_secs(5);
    while send.current_max_send_streams() != 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        send.current_max_send_streams(),
        2,
        "the server's SETTINGS carry the limit"
    );
    let (_first, mut first_stream) = send
        .send_request(open_add_request(adder.grpc), false)
        .expect("first stream");
    let mut send = send.ready().await.expect("ready");
    let (_second, _second_stream) = send
        .send_request(open_add_request(adder.grpc), false)
        .expect("second stream");
    let mut send = send.ready().await.expect("ready");
    let (third, mut third_stream) = send
        .send_request(open_add_request(adder.grpc), false)
        .expect("third stream, queued by the client");
    // Add(20, 22): a gRPC frame (no compression, 4-byte length) of the
    // protobuf fields a = 20 and b = 22.
    let add = vec![0, 0, 0, 0, 4, 0x08, 20, 0x10, 22];
    third_stream
        .send_data(add.into(), true)
        .expect("the third call's body");
    let mut third = Box::pin(third);
    let early = tokio::time::timeout(Duration::from_millis(700), &mut third).await;
    assert!(
        early.is_err(),
        "a third concurrent call was served past the limit of 2: {early:?}"
    );
    first_stream.send_reset(h2::Reason::CANCEL);
    let response = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("the third call is served once a stream ends")
        .expect("a response");
    assert_eq!(response.status(), 200);
    adder.stop().await;
}

#[tokio::test]
async fn grpc_call_past_the_timeout_is_cancelled_and_a_retry_records_once() {
    let db = database::fresh().await;
    let mut config = config(
        &db,
        &testkit::amqp_url(),
        &testkit::unique_queue("grpc-timeout"),
    );
    config.limits.grpc_timeout_ms = 500;
    let adder = spawn_adder(config).await;
    let mut client = adder.client().await;
    call(&mut client, 1, 1, "warm-up").await.expect("Add");
    let pool = pool(&db).await;
    let mut lock = pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE outbox IN EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .expect("lock the outbox so the INSERT blocks");
    let started = Instant::now();
    let slow = tokio::time::timeout(Duration::from_secs(5), call(&mut client, 2, 3, "slow-1"))
        .await
        .expect("the server ends a call past its timeout");
    let status = slow.expect_err("a blocked Add does not succeed");
    assert!(
        matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded),
        "{status:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    lock.rollback().await.expect("release the lock");
    let retry = call(&mut client, 2, 3, "slow-1")
        .await
        .expect("the retry succeeds");
    assert_eq!(retry.sum, 5);
    assert_eq!(
        outbox_counts(&pool).await.0,
        2,
        "the retried Add is recorded once"
    );
    adder.stop().await;
}

/// Opens `count` TCP connections to `addr` that never send a byte.
async fn silent_sockets(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut sockets = Vec::new();
    for _ in 0..count {
        sockets.push(TcpStream::connect(addr).await.expect("connect"));
    }
    sockets
}

#[tokio::test]
async fn grpc_sockets_that_send_nothing_are_closed_after_the_handshake_timeout() {
    let db = database::fresh().await;
    let mut config = config(
        &db,
        &testkit::amqp_url(),
        &testkit::unique_queue("grpc-silent"),
    );
    config.limits.grpc_max_connections = 3;
    config.limits.grpc_handshake_timeout_ms = 500;
    let adder = spawn_adder(config).await;
    let mut silent = silent_sockets(adder.grpc, 3).await;
    let started = Instant::now();
    let add = async {
        let mut client = adder.client().await;
        call(&mut client, 20, 22, "").await
    };
    let response = tokio::time::timeout(Duration::from_secs(5), add)
        .await
        .expect("an Add gets a connection slot once the silent sockets are closed")
        .expect("Add");
    assert_eq!(response.sum, 42);
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "the silent sockets held every slot until their timeout: {:?}",
        started.elapsed()
    );
    for socket in &mut silent {
        let mut settings = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(2), socket.read_to_end(&mut settings))
            .await
            .expect("a silent socket is closed by the server");
        assert!(read.is_ok(), "{read:?}");
    }
    adder.stop().await;
}

#[tokio::test]
async fn grpc_connection_without_a_call_is_closed_after_the_idle_timeout_one_with_a_call_is_not() {
    let db = database::fresh().await;
    let mut config = config(
        &db,
        &testkit::amqp_url(),
        &testkit::unique_queue("grpc-idle"),
    );
    config.limits.grpc_idle_timeout_ms = 500;
    config.limits.grpc_timeout_ms = 2_000;
    let adder = spawn_adder(config).await;
    let idle = TcpStream::connect(adder.grpc).await.expect("connect");
    let (_idle, idle_connection) = h2::client::handshake(idle).await.expect("h2 handshake");
    let idle_connection = tokio::spawn(idle_connection);
    let busy = TcpStream::connect(adder.grpc).await.expect("connect");
    let (busy, busy_connection) = h2::client::handshake(busy).await.expect("h2 handshake");
    tokio::spawn(busy_connection);
    let mut busy = busy.ready().await.expect("ready");
    // A call whose body never comes: in progress until the call timeout.
    let (response, _body) = busy
        .send_request(open_add_request(adder.grpc), false)
        .expect("a stream");
    // Ended, by an EOF the client takes for a clean close.
    let _ended = tokio::time::timeout(Duration::from_secs(5), idle_connection)
        .await
        .expect("the connection without a call is closed")
        .expect("the connection task");
    let started = Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .expect("the call ends at its timeout")
        .expect("an answer on a connection kept open past the idle timeout");
    assert_eq!(response.status(), 200);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    adder.stop().await;
}

#[tokio::test]
async fn grpc_connection_that_does_not_answer_pings_is_closed_after_the_keepalive_timeout() {
    let db = database::fresh().await;
    let mut config = config(
        &db,
        &testkit::amqp_url(),
        &testkit::unique_queue("grpc-keepalive"),
    );
    config.limits.grpc_keepalive_interval_ms = 300;
    config.limits.grpc_keepalive_timeout_ms = 300;
    config.limits.grpc_idle_timeout_ms = 60_000;
    let adder = spawn_adder(config).await;
    let mut stream = TcpStream::connect(adder.grpc).await.expect("connect");
    // The client preface and an empty SETTINGS frame; then silence, PINGs
    // unanswered.
    let mut handshake = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    handshake.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    stream
        .write_all(&handshake)
        .await
        .expect("send the handshake");
    let mut frames = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut frames))
        .await
        .expect("the server closes a connection that does not answer its PINGs");
    assert!(read.is_ok(), "{read:?}");
    adder.stop().await;
}

#[tokio::test]
async fn http_half_sent_request_is_closed_after_the_header_timeout() {
    let db = database::fresh().await;
    let mut config = config(
        &db,
        &testkit::amqp_url(),
        &testkit::unique_queue("http-header"),
    );
    config.limits.http_header_timeout_ms = 500;
    let adder = spawn_adder(config).await;
    let mut stream = TcpStream::connect(adder.http).await.expect("connect");
    stream
        .write_all(b"POST /ad")
        .await
        .expect("send half a line");
    let started = Instant::now();
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("the server closes a half-sent request");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    adder.stop().await;
}

#[tokio::test]
async fn http_request_with_a_stalled_body_gets_408_after_the_request_timeout() {
    let db = database::fresh().await;
    let mut config = config(
        &db,
        &testkit::amqp_url(),
        &testkit::unique_queue("http-request"),
    );
    config.limits.http_request_timeout_ms = 500;
    let adder = spawn_adder(config).await;
    let mut stream = TcpStream::connect(adder.http).await.expect("connect");
    stream
        .write_all(b"POST /add HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n{\"a\": 1,")
        .await
        .expect("send a head and part of the body");
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .expect("the server answers and closes a stalled request");
    assert!(read.is_ok(), "{read:?}");
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains(r#""error""#), "{response}");
    assert_eq!(outbox_counts(&pool(&db).await).await.0, 0);
    adder.stop().await;
}

/// CPU time (user + system) the process has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/pid/stat");
    let after_name = &stat[stat.rfind(')').expect("a command name") + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    // Fields 14 and 15 of stat(5); `after_name` starts at field 3.
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

#[tokio::test]
async fn accept_backs_off_when_out_of_file_descriptors_and_serves_again_after() {
    let db = database::fresh().await;
    let queue = testkit::unique_queue("emfile");
    let (grpc_port, http_port) = (free_port(), free_port());
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 64 && exec {}",
            env!("CARGO_BIN_EXE_adder")
        ))
        .env("DATABASE_URL", &db)
        .env("AMQP_URL", testkit::amqp_url())
        .env("TALLY_QUEUE", &queue)
        .env("ADDER_GRPC_ADDR", format!("127.0.0.1:{grpc_port}"))
        .env("ADDER_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
        .env("ADDER_DB_POOL", "2")
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the adder binary");
    let grpc: SocketAddr = format!("127.0.0.1:{grpc_port}").parse().expect("addr");
    wait_for_http(format!("127.0.0.1:{http_port}").parse().expect("addr")).await;
    let mut flood = Vec::new();
    for _ in 0..150 {
        flood.push(
            TcpStream::connect(grpc)
                .await
                .expect("the backlog takes it"),
        );
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = cpu_ticks(child.id());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let used = cpu_ticks(child.id()) - before;
    // 100 ticks a second: a spinning accept loop burns about 300 here.
    assert!(
        used < 60,
        "the adder used {used} ticks of CPU in 3 s while out of descriptors"
    );
    drop(flood);
    let url = format!("http://{grpc}");
    let sum = testkit::eventually(Duration::from_secs(20), "Adds to succeed again", || {
        let url = url.clone();
        async move {
            let mut client = proto::tally::v1::adder_client::AdderClient::connect(url)
                .await
                .ok()?;
            call(&mut client, 20, 22, "").await.ok()
        }
    })
    .await;
    assert_eq!(sum.sum, 42);
    let _ = child.kill();
    let _ = child.wait();
}
