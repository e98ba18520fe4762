//! AMQP_PASSWORD_FILE (compose's generated secrets): the real binary logs in
//! with the password the file holds; a file that is missing, unreadable or
//! empty stops it at start with an error naming the setting and the file;
//! and, as for a password in the URL
//! (`startup::the_totaler_never_logs_the_password_of_its_amqp_url`), at
//! RUST_LOG=debug through a failure that logs, a password from the file is
//! never written, plain or percent-encoded.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use testkit::{free_port, process};

use crate::support::temp_dir;

#[tokio::test]
async fn a_password_from_a_file_opens_the_broker() {
    let dir = temp_dir("files-work");
    let (amqp_url, password) = testkit::split_password(&testkit::amqp_url());
    let file = write(&dir, "amqp-password", &format!("{password}\n"));
    let totaler = Totaler::start(&dir, &amqp_url, &file);
    let http = totaler.http;
    testkit::eventually(
        Duration::from_secs(30),
        "/readyz: consuming from the broker",
        || async move {
            testkit::http::get(http, "/readyz")
                .await
                .filter(|(status, _)| *status == 200)
        },
    )
    .await;
    let output = totaler.stop().await;
    assert!(output.status.success(), "{}", text(&output));
}

#[tokio::test]
async fn a_password_file_that_gives_no_password_stops_the_totaler_naming_it() {
    let dir = temp_dir("files-bad");
    let missing = dir.join("missing");
    let empty = write(&dir, "empty", "");
    let unreadable = dir.join("a-directory");
    std::fs::create_dir(&unreadable).expect("create a directory");
    for (file, why) in [
        (&missing, "cannot read"),
        (&empty, "is empty"),
        (&unreadable, "cannot read"),
    ] {
        let child = Totaler::command(&dir, "amqp://tally-totaler@127.0.0.1:9/%2f", file)
            .env("TOTALER_HTTP_ADDR", format!("127.0.0.1:{}", free_port()))
            .spawn()
            .expect("start the totaler binary");
        let (output, _) =
            process::output_within(child, Duration::from_secs(15), "the totaler").await;
        let logs = text(&output);
        assert!(!output.status.success(), "{file:?} started");
        let path = file.display().to_string();
        for part in ["AMQP_PASSWORD_FILE: ", why, &path] {
            assert!(logs.contains(part), "{part} not said: {logs}");
        }
    }
}

#[tokio::test]
async fn the_totaler_never_logs_the_password_of_its_password_file() {
    let dir = temp_dir("files-secret");
    let (amqp_url, _) = testkit::split_password(&testkit::amqp_url());
    let secret = "Amqp@Secret/41d7c";
    let file = write(&dir, "amqp-password", secret);
    let totaler = Totaler::start(&dir, &amqp_url, &file);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let logs = text(&totaler.stop().await);
    assert!(
        logs.contains("consumer cannot reach the broker"),
        "the failure is logged: {logs}"
    );
    for form in [
        secret,
        "Amqp%40Secret%2F41d7c",
        "Secret/41d7c",
        "Secret%2F41d7c",
    ] {
        assert!(!logs.contains(form), "{form} is logged: {logs}");
    }
}

/// The totaler binary at RUST_LOG=debug, its sum file in `dir`.
struct Totaler {
    child: Child,
    http: SocketAddr,
}

impl Totaler {
    fn command(dir: &Path, amqp_url: &str, password_file: &Path) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_totaler"));
        command
            .env("AMQP_URL", amqp_url)
            .env("AMQP_PASSWORD_FILE", password_file)
            .env("TALLY_QUEUE", testkit::unique_queue("password-files"))
            .env("SUM_FILE", dir.join("sum.txt"))
            .env("RUST_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    fn start(dir: &Path, amqp_url: &str, password_file: &Path) -> Self {
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Self::command(dir, amqp_url, password_file)
            .env("TOTALER_HTTP_ADDR", http.to_string())
            .spawn()
            .expect("start the totaler binary");
        Self { child, http }
    }

    /// SIGTERM, then everything it wrote.
    async fn stop(self) -> Output {
        process::terminate(self.child.id());
        let (output, _) = process::output_within(
            self.child,
            Duration::from_secs(15),
            "the totaler after SIGTERM",
        )
        .await;
        output
    }
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write a password file");
    path
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
