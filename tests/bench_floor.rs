//! bench/floor.rs, the floor `bench/run` measures beside nginx and
//! switchyard: it must forward a request whole and relay a stream event by
//! event, or the benchmark's floor figures mean nothing.

mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{Client, Mock, chat, client};

/// `target/<profile>/examples/floor`, which `cargo test` builds with the tests.
fn floor_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("examples").join("floor");
    path.exists().then_some(path)
}

struct Floor(Child);

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(binary: &PathBuf, backend: &str) -> (Floor, String) {
    let mut child = Command::new(binary)
        .args(["127.0.0.1:0", backend])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the floor starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the floor names its address (an old build? run the whole `cargo test`)");
    let addr = line
        .trim()
        .strip_prefix("floor listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_owned();
    (Floor(child), addr)
}

#[tokio::test]
async fn the_floor_forwards_answers_and_streams() {
    let Some(binary) = floor_binary() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "examples/floor was not built: run the whole `cargo test`"
        );
        eprintln!("SKIPPED: examples/floor was not built (run the whole `cargo test`)");
        return;
    };
    let mock = Mock::openai().await;
    let (_floor, addr) = start(&binary, &mock.addr.to_string());
    let client = Client::new();
    let url = format!("http://{addr}/v1/chat/completions");

    let body = chat("backend-model", false);
    let reply = client.post(&url, &[], body.clone()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.json()["choices"][0]["message"]["content"],
        "Hello world"
    );
    assert_eq!(reply.json()["model"], "backend-model");
    let seen = mock.last();
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(seen.body, body.as_bytes());
    assert_eq!(seen.header("content-type"), Some("application/json"));

    let reply = client.post(&url, &[], chat("backend-model", true)).await;
    assert_eq!(reply.status, 200);
    let chunks = client::chunks_of(&reply.events());
    assert_eq!(client::streamed_content(&chunks), "Hello world");

    // A backend that is not there is a 502, not a hang or a crash.
    drop(mock);
    let (_gone, addr) = start(&binary, "127.0.0.1:1");
    let reply = client
        .post(
            &format!("http://{addr}/v1/chat/completions"),
            &[],
            chat("m", false),
        )
        .await;
    assert_eq!(reply.status, 502);
}
