//! The command line as users run it: check, keys new, models, and the
//! default config answering through the demo backend.

mod support;

use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::client::{chunks_of, streamed_content};
use support::{Client, Gateway, TempDir, chat};

fn switchyard(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    command.args(args).env_remove("SWITCHYARD_CONFIG");
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(dir: &TempDir, text: &str) -> String {
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn check_accepts_the_shipped_configs() {
    let (code, out, err) = switchyard(&["check", "--config", "config/switchyard.yaml"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(": ok ("), "{out}");
    for entry in std::fs::read_dir("config/examples").unwrap() {
        let path = entry.unwrap().path();
        let path = path.to_string_lossy();
        let (code, out, err) = switchyard(
            &["check", "--config", &path],
            &[("VLLM_API_KEY", "k"), ("OPENAI_API_KEY", "k")],
        );
        assert_eq!(code, 0, "{path}: {out}{err}");
    }
}

#[test]
fn check_prints_every_problem_with_its_path() {
    let dir = TempDir::new();
    let path = write(
        &dir,
        r#"
listen: nowhere
timeouts: {connect: 5 parsecs}
limits: {max_request_body: 8 bananas}
keys:
  - {id: a, sha256: "not-hex"}
  - {id: a, sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}
providers:
  vllm: {type: openai, base_url: "http://x:8000/v1", api_key: "${MISSING_VAR}"}
  lmstudio: {type: openai, base_url: "http://localhost:1234/v1", bogus: 1}
  bad: {type: telepathy}
models:
  chat-default:
    targets:
      - {provider: vllm, model: a}
      - {provider: lmstudo, model: b}
  "bad[glob": {targets: [{provider: vllm}]}
"#,
    );
    let (code, out, err) = switchyard(&["check", "--config", &path], &[]);
    assert_eq!(code, 1, "{out}{err}");
    for expected in [
        "models.chat-default.targets[1].provider: no provider named \"lmstudo\"",
        "providers.vllm.api_key: environment variable MISSING_VAR is not set",
        "providers.lmstudio:",
        "bogus",
        "providers.bad.type:",
        "keys[0].sha256:",
        "timeouts.connect:",
        "limits.max_request_body:",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert!(out.lines().count() >= 8, "one line per problem:\n{out}");
    assert!(err.contains("problems"), "{err}");
}

#[test]
fn check_reports_cross_reference_problems_on_a_well_formed_file() {
    let dir = TempDir::new();
    let path = write(
        &dir,
        r#"
listen: "127.0.0.1:99999"
keys:
  - {id: a, sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", models: ["x[", "ok-*"]}
  - {id: a, sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}
providers:
  p: {type: openai, base_url: "ftp://x/v1"}
models:
  m: {targets: [{provider: lmstudo}]}
  "w[": {targets: [{provider: p}]}
"#,
    );
    let (code, out, _) = switchyard(&["check", "--config", &path], &[]);
    assert_eq!(code, 1);
    for expected in [
        "listen:",
        "keys[0].models[0]: bad pattern",
        "keys[1].id: duplicate key id \"a\"",
        "keys[1].sha256: the same key is already configured as \"a\"",
        "providers.p.base_url",
        "models.m.targets[0].provider: no provider named \"lmstudo\"",
        "models.\"w[\": bad pattern",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
}

#[test]
fn check_refuses_provider_headers_the_gateway_sets() {
    let dir = TempDir::new();
    let path = write(
        &dir,
        r#"
providers:
  p:
    type: openai
    base_url: "http://127.0.0.1:1/v1"
    headers: {x-tenant: search, content-length: "5", Connection: close, x-request-id: fixed}
models:
  m: {targets: [{provider: p}]}
"#,
    );
    let (code, out, _) = switchyard(&["check", "--config", &path], &[]);
    assert_eq!(code, 1, "{out}");
    for name in ["content-length", "Connection", "x-request-id"] {
        let expected = format!("headers.{name}: is set by the gateway and cannot be configured");
        assert!(out.contains(&expected), "missing {expected:?} in:\n{out}");
    }
    assert!(!out.contains("x-tenant"), "{out}");
}

#[test]
fn check_reads_the_config_path_from_the_environment() {
    let (code, out, _) = switchyard(
        &["check"],
        &[("SWITCHYARD_CONFIG", "config/switchyard.yaml")],
    );
    assert_eq!(code, 0, "{out}");
    let (code, _, err) = switchyard(&["check"], &[("SWITCHYARD_CONFIG", "/nonexistent/x.yaml")]);
    assert_eq!(code, 1);
    assert!(err.contains("problem"));
}

#[test]
fn models_prints_the_alias_table() {
    let (code, out, _) = switchyard(&["models", "--config", "config/switchyard.yaml"], &[]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("ALIAS"));
    assert!(
        lines
            .iter()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["demo", "demo", "demo", "demo", "1"])
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("demo-echo") && l.contains("echo"))
    );
}

#[tokio::test]
async fn a_new_key_authenticates() {
    let (code, out, _) = switchyard(&["keys", "new", "--id", "search-team"], &[]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    let key = lines[0];
    assert!(key.starts_with("sk-sy-") && key.len() == 49, "{key}");
    assert_eq!(lines[1], "- id: search-team");
    assert!(lines[2].starts_with("  sha256: \""));
    let config = format!(
        "keys:\n{}\n{}\nproviders: {{demo: {{type: demo, pace: 0s}}}}\nmodels: {{demo: {{targets: [{{provider: demo}}]}}}}\n",
        lines[1].replacen("- ", "  - ", 1),
        lines[2].replacen("  ", "    ", 1)
    );
    let gw = Gateway::start(&config);
    let client = Client::new();
    let bearer = format!("Bearer {key}");
    let ok = client
        .post(
            &gw.url("/v1/chat/completions"),
            &[("authorization", &bearer)],
            chat("demo", false),
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let no = client
        .post(
            &gw.url("/v1/chat/completions"),
            &[("authorization", "Bearer sk-sy-nope")],
            chat("demo", false),
        )
        .await;
    assert_eq!(no.status, 401);
    gw.wait_for_metric(
        "switchyard_requests_total{endpoint=\"chat\",key=\"search-team\",model=\"demo\",provider=\"demo\",status=\"200\"}",
        1.0,
    )
    .await;
}

#[tokio::test]
async fn the_default_config_answers_through_the_demo_backend() {
    // The shipped file, with only the ports made ephemeral and logs as JSON.
    let shipped = std::fs::read_to_string("config/switchyard.yaml").unwrap();
    let text = shipped
        .replace("listen: 127.0.0.1:8080", "listen: 127.0.0.1:0")
        .replace("admin_listen: 127.0.0.1:9090", "admin_listen: 127.0.0.1:0")
        .replace("format: pretty", "format: json");
    assert_ne!(text, shipped);
    let dir = TempDir::new();
    let path = dir.path().join("switchyard.yaml");
    std::fs::write(&path, text).unwrap();
    let gw = Gateway::start_file(dir, path, &[]);
    let client = Client::new();

    let reply = client
        .post(&gw.url("/v1/chat/completions"), &[], chat("demo", false))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let v = reply.json();
    assert_eq!(v["model"], "demo");
    assert!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .contains("switchyard")
    );
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() > 10);

    let reply = client
        .post(
            &gw.url("/v1/chat/completions"),
            &[("authorization", "Bearer sk-sy-demo")],
            chat("demo-echo", true),
        )
        .await;
    assert_eq!(reply.status, 200);
    let events = reply.events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let text = streamed_content(&chunks_of(&events));
    assert_eq!(text, "Say hello");

    let health = client.get(&gw.admin_url("/healthz"), &[]).await;
    assert_eq!(health.status, 200);
    let ready = client.get(&gw.admin_url("/readyz"), &[]).await;
    assert_eq!(ready.status, 200);
}

/// The demo backend behind `m`, with a grace longer than `wait_exit`
/// waits: a drain that left a connection open would be seen.
const DRAINING: &str = "shutdown_grace: 60s\nauth: {required: false}\nproviders: {d: {type: demo, pace: 0s}}\nmodels: {m: {targets: [{provider: d}]}}\n";

#[tokio::test]
async fn h2c_clients_are_served_and_drained() {
    // HTTP/2 by prior knowledge, as some SDKs and proxies speak it: a whole
    // answer, a stream, and on SIGTERM a prompt exit although the client
    // keeps its connection open (the drain sends it GOAWAY).
    let mut gw = Gateway::start(DRAINING);
    let client = support::Client::h2c();
    let whole = client
        .post(&gw.url("/v1/chat/completions"), &[], chat("m", false))
        .await;
    assert_eq!(whole.status, 200, "{}", whole.text());
    assert_eq!(whole.version, http::Version::HTTP_2);
    assert!(whole.header("x-request-id").is_some());
    assert_eq!(whole.json()["choices"][0]["message"]["role"], "assistant");
    let streamed = client
        .post(&gw.url("/v1/chat/completions"), &[], chat("m", true))
        .await;
    assert_eq!(streamed.version, http::Version::HTTP_2);
    assert!(!streamed_content(&streamed.chunks()).is_empty());

    gw.signal("TERM");
    let asked = std::time::Instant::now();
    while gw.is_running() && asked.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !gw.is_running(),
        "the open HTTP/2 connection is drained at once, not after the grace"
    );
    drop(client);
}

#[tokio::test]
async fn sigterm_drains_and_exits() {
    // A grace longer than `wait_exit` waits: the drain must close the
    // client's idle keep-alive connection, not wait the grace out.
    let mut gw = Gateway::start(DRAINING);
    assert_eq!(
        Client::new()
            .post(&gw.url("/v1/chat/completions"), &[], chat("m", false))
            .await
            .status,
        200
    );
    // A keep-alive connection left open and idle after one answer.
    let address = gw.url("").trim_start_matches("http://").to_owned();
    let mut idle = tokio::net::TcpStream::connect(&address).await.unwrap();
    idle.write_all(b"GET /v1/models HTTP/1.1\r\nhost: switchyard\r\n\r\n")
        .await
        .unwrap();
    let (status, head, _) = support::read_answer(&mut idle).await;
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_lowercase().contains("content-length:"),
        "the answer is complete before the connection closes: {head}"
    );
    gw.signal("TERM");
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "the idle connection is closed at once, not after the grace: {closed:?}"
    );
    let status = gw.wait_exit().expect("the gateway exits after SIGTERM");
    assert!(status.success());
    let logs = gw.logs();
    assert!(logs.iter().any(|l| l.contains("shutting down")));
    let draining: Vec<serde_json::Value> = logs
        .iter()
        .filter(|l| l.contains("draining connections"))
        .map(|l| serde_json::from_str(l).expect("JSON log line"))
        .collect();
    let public = draining
        .iter()
        .find(|v| v["listener"] == "public")
        .unwrap_or_else(|| panic!("the public listener's drain is logged: {logs:?}"));
    assert!(
        public["connections"].as_u64() >= Some(1),
        "the idle connection is counted: {public}"
    );
}
