//! Test support: the gateway binary on ephemeral ports, mock backends and a
//! small HTTP client, all on real loopback sockets.
#![allow(dead_code)]

pub mod client;
pub mod mock;
pub mod redis;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[allow(unused_imports)]
pub use client::{Client, Reply};
#[allow(unused_imports)]
pub use mock::{Mock, Recorded, Step};

/// A scratch directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("switchyard-test-{:016x}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The header every test config gets: ephemeral loopback ports, JSON logs.
pub const PREAMBLE: &str =
    "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nlog: {level: info, format: json}\n";

/// A running `switchyard serve` process.
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: TempDir,
    pub config: PathBuf,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Gateway {
    /// Starts the gateway on `PREAMBLE` + `config`.
    pub fn start(config: &str) -> Gateway {
        Gateway::start_with_env(config, &[])
    }

    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Gateway {
        let dir = TempDir::new();
        let path = dir.path().join("switchyard.yaml");
        std::fs::write(&path, format!("{PREAMBLE}{config}")).unwrap();
        Gateway::start_file(dir, path, env)
    }

    /// Starts the gateway on a config file that already exists.
    pub fn start_file(dir: TempDir, path: PathBuf, env: &[(&str, &str)]) -> Gateway {
        let mut command = Command::new(env!("CARGO_BIN_EXE_switchyard"));
        command
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("the switchyard binary starts");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("switchyard is serving")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(line.clone());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "the gateway did not start; its log:\n{}",
                    logs.lock().unwrap().join("\n")
                );
            }
        };
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
        Gateway {
            child,
            addr: v["listen"].as_str().unwrap().parse().unwrap(),
            admin: v["admin_listen"].as_str().unwrap().parse().unwrap(),
            dir,
            config: path,
            logs,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Every log line so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Waits (polling the log, at most 10 s) for a line containing `needle`
    /// beyond the first `skip` lines; returns it.
    pub async fn wait_for_log(&self, needle: &str, skip: usize) -> String {
        for _ in 0..1000 {
            if let Some(line) = self
                .logs()
                .into_iter()
                .skip(skip)
                .find(|l| l.contains(needle))
            {
                return line;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "no log line with {needle:?}; log:\n{}",
            self.logs().join("\n")
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`HUP`, `TERM`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Replaces the config file in place (PREAMBLE + `config`).
    pub fn rewrite_config(&self, config: &str) {
        std::fs::write(&self.config, format!("{PREAMBLE}{config}")).unwrap();
    }

    /// Replaces the config file the way editors do: write a temp file, rename it over.
    pub fn rename_config(&self, config: &str) {
        let tmp = self.dir.path().join(".switchyard.yaml.swp");
        std::fs::write(&tmp, format!("{PREAMBLE}{config}")).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
    }

    /// The value of one series in /metrics, or 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = Client::new()
            .get(&self.admin_url("/metrics"), &[])
            .await
            .text();
        metric_value(&text, series)
    }

    /// Waits until `metric(series)` reaches `at_least` (10 s at most).
    pub async fn wait_for_metric(&self, series: &str, at_least: f64) {
        for _ in 0..1000 {
            if self.metric(series).await >= at_least {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{series} never reached {at_least}");
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the process to exit (10 s at most).
    pub fn wait_exit(&mut self) -> Option<std::process::ExitStatus> {
        for _ in 0..1000 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of a series (`name{labels}` exactly as exposed) in Prometheus text.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// A chat request body.
pub fn chat(model: &str, stream: bool) -> String {
    serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "Say hello"}],
        "stream": stream,
    })
    .to_string()
}

/// Hex SHA-256 of a key, as the config wants it.
pub fn digest(key: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An http:// base URL on a loopback port with nothing listening.
pub fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}/v1")
}

/// Reads one HTTP/1.1 answer from `stream`: its status, head and body (by its content-length, or
/// up to the end of the connection).
pub async fn read_answer(stream: &mut tokio::net::TcpStream) -> (u16, String, Vec<u8>) {
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 8192];
        loop {
            let n = match tokio::io::AsyncReadExt::read(stream, &mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = head_end(&buf) {
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse::<usize>().ok());
                if len.is_some_and(|len| buf.len() >= end + 4 + len) {
                    break;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("an answer within 10 s");
    let end = head_end(&buf)
        .unwrap_or_else(|| panic!("no response head: {:?}", String::from_utf8_lossy(&buf)));
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head, buf[end + 4..].to_vec())
}

/// Where the head in `buf` ends (its blank line).
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}
