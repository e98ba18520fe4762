//! DATABASE_PASSWORD_FILE and AMQP_PASSWORD_FILE (compose's generated
//! secrets): the real binary logs in with the passwords the files hold; a
//! file that is missing, unreadable or empty stops it at start with an error
//! naming the setting and the file; and, as for passwords in the URLs
//! (`startup::the_adder_never_logs_the_passwords_of_its_urls`), at
//! RUST_LOG=debug through failures that log, a password from a file is
//! never written, plain or percent-encoded.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use testkit::{database, free_port, process};
use uuid::Uuid;

#[tokio::test]
async fn passwords_from_files_open_the_outbox_and_the_broker() {
    let dir = temp_dir("files-work");
    let (db_url, db_password) = testkit::split_password(&database::fresh().await);
    let (amqp_url, amqp_password) = testkit::split_password(&testkit::amqp_url());
    let db_file = write(&dir, "db-password", &format!("{db_password}\n"));
    let amqp_file = write(&dir, "amqp-password", &format!("{amqp_password}\n"));
    let adder = Adder::start(&[
        ("DATABASE_URL", db_url.as_str()),
        ("DATABASE_PASSWORD_FILE", path_str(&db_file)),
        ("AMQP_URL", amqp_url.as_str()),
        ("AMQP_PASSWORD_FILE", path_str(&amqp_file)),
    ]);
    let http = adder.http;
    testkit::eventually(
        Duration::from_secs(30),
        "/readyz: the outbox open and the relay on the broker",
        || async move {
            testkit::http::get(http, "/readyz")
                .await
                .filter(|(status, body)| *status == 200 && body.contains("\"broker\":true"))
        },
    )
    .await;
    let output = adder.stop().await;
    assert!(output.status.success(), "{}", text(&output));
}

#[tokio::test]
async fn a_password_file_that_gives_no_password_stops_the_adder_naming_it() {
    let dir = temp_dir("files-bad");
    let missing = dir.join("missing");
    let empty = write(&dir, "empty", "\n");
    let unreadable = dir.join("a-directory");
    std::fs::create_dir(&unreadable).expect("create a directory");
    for setting in ["DATABASE_PASSWORD_FILE", "AMQP_PASSWORD_FILE"] {
        for (file, why) in [
            (&missing, "cannot read"),
            (&empty, "is empty"),
            (&unreadable, "cannot read"),
        ] {
            let child = Adder::command(&[
                ("DATABASE_URL", "postgres://tally@127.0.0.1:9/tally"),
                ("AMQP_URL", "amqp://tally-adder@127.0.0.1:9/%2f"),
                (setting, path_str(file)),
            ])
            .spawn()
            .expect("start the adder binary");
            let (output, _) =
                process::output_within(child, Duration::from_secs(15), "the adder").await;
            let logs = text(&output);
            assert!(!output.status.success(), "{setting}={file:?} started");
            let (setting_named, path) = (format!("{setting}: "), file.display().to_string());
            for part in [setting_named.as_str(), why, &path] {
                assert!(logs.contains(part), "{part} not said: {logs}");
            }
        }
    }
}

#[tokio::test]
async fn the_adder_never_logs_the_passwords_of_its_password_files() {
    let dir = temp_dir("files-secret");
    let db = database::fresh().await;
    let (db_url, _) = testkit::split_password(&db);
    let (amqp_url, _) = testkit::split_password(&testkit::amqp_url());
    // Wrong passwords, with characters the URLs carry percent-encoded.
    let (db_secret, amqp_secret) = ("Db/Secret:7f3a9", "Amqp@Secret/9c1e4");
    let db_file = write(&dir, "db-password", db_secret);
    let amqp_file = write(&dir, "amqp-password", amqp_secret);
    let adder = Adder::start(&[
        ("DATABASE_URL", db_url.as_str()),
        ("DATABASE_PASSWORD_FILE", path_str(&db_file)),
        ("AMQP_URL", amqp_url.as_str()),
        ("AMQP_PASSWORD_FILE", path_str(&amqp_file)),
    ]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let logs = text(&adder.stop().await);
    assert!(
        logs.contains("outbox database not ready"),
        "the database failure is logged: {logs}"
    );
    for secret in [db_secret, amqp_secret] {
        for form in [
            secret.to_owned(),
            encoded(secret),
            secret.replace('/', "%2F"),
        ] {
            assert!(!logs.contains(&form), "{form} is logged: {logs}");
        }
    }
    // The broker's failure needs an outbox that opens.
    let db_file = write(&dir, "db-password-right", &testkit::split_password(&db).1);
    let adder = Adder::start(&[
        ("DATABASE_URL", db_url.as_str()),
        ("DATABASE_PASSWORD_FILE", path_str(&db_file)),
        ("AMQP_URL", amqp_url.as_str()),
        ("AMQP_PASSWORD_FILE", path_str(&amqp_file)),
    ]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let logs = text(&adder.stop().await);
    assert!(
        logs.contains("relay cannot reach the broker"),
        "the broker failure is logged: {logs}"
    );
    for form in [amqp_secret.to_owned(), encoded(amqp_secret)] {
        assert!(!logs.contains(&form), "{form} is logged: {logs}");
    }
}

/// The adder binary at RUST_LOG=debug on free ports.
struct Adder {
    child: Child,
    http: std::net::SocketAddr,
}

impl Adder {
    fn command(env: &[(&str, &str)]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_adder"));
        command
            .env_remove("DATABASE_PASSWORD_FILE")
            .env_remove("AMQP_PASSWORD_FILE")
            .env("TALLY_QUEUE", testkit::unique_queue("password-files"))
            .env("ADDER_GRPC_ADDR", format!("127.0.0.1:{}", free_port()))
            .env("RUST_LOG", "debug")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    fn start(env: &[(&str, &str)]) -> Self {
        let http = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Self::command(env)
            .env("ADDER_HTTP_ADDR", http.to_string())
            .spawn()
            .expect("start the adder binary");
        Self { child, http }
    }

    /// SIGTERM, then everything it wrote.
    async fn stop(self) -> Output {
        process::terminate(self.child.id());
        let (output, _) = process::output_within(
            self.child,
            Duration::from_secs(15),
            "the adder after SIGTERM",
        )
        .await;
        output
    }
}

fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tally-adder-{test}-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("create the test directory");
    dir
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write a password file");
    path
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temporary path")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Every byte but the unreserved characters percent-encoded.
fn encoded(secret: &str) -> String {
    secret
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
