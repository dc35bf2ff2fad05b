//! `type: rest` end to end: plain JSON APIs over HTTP (whole answers, NDJSON
//! and SSE streams) and over WebSocket (a mock server on tokio-tungstenite's
//! accept side), all described by a body template and JSON Pointers.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::HeaderMap;
use serde_json::{Value, json};
use support::mock::{Plan, Step};
use support::{Client, Gateway, Mock, TempDir};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

fn http_provider(url: &str) -> String {
    format!(
        r#"  api:
    type: rest
    url: {url}
    api_key: sk-rest-SECRET
    auth_header: x-api-key
    headers: {{x-tenant: search}}
    body:
      model: "{{{{model}}}}"
      input: {{text: "{{{{prompt}}}}", system: "{{{{system}}}}"}}
      parameters: {{max_new_tokens: "{{{{max_tokens}}}}", temperature: "{{{{temperature}}}}", top_p: "{{{{top_p}}}}", seed: "{{{{request.seed}}}}"}}
      stream: "{{{{stream}}}}"
      tag: "switchyard/{{{{model}}}}"
    response:
      content: /result/output
      prompt_tokens: /result/tokens/input
      completion_tokens: /result/tokens/output
      finish_reason: /result/finish
      error: /error
    stream:
      format: ndjson
      delta: /chunk
      done: /final
      prompt_tokens: /tokens/input
      completion_tokens: /tokens/output
      finish_reason: /finish
      error: /error
"#
    )
}

fn http_config(mock: &Mock) -> String {
    let others = format!(
        r#"  sse:
    type: rest
    url: {url}
    body: {{prompt: "{{{{last_user_message}}}}", stream: "{{{{stream}}}}"}}
    response: {{content: /text}}
    stream: {{format: sse, delta: /delta/text, done: "[DONE]", finish_reason: /finish, error: /error}}
  whole:
    type: rest
    url: {url}
    body: {{prompt: "{{{{last_user_message}}}}", stream: "{{{{stream}}}}"}}
    response: {{content: /text, completion_tokens: /n}}
"#,
        url = mock.url("/sse")
    );
    format!(
        "auth: {{required: false}}\nproviders:\n{}{others}models:\n  api: {{targets: [{{provider: api, model: gen-1}}]}}\n  sse: {{targets: [{{provider: sse, model: gen-1}}]}}\n  whole: {{targets: [{{provider: whole, model: gen-1}}]}}\n",
        http_provider(&mock.url("/v2/generate")),
    )
}

fn chat(model: &str, stream: bool) -> String {
    json!({"model": model, "stream": stream, "stream_options": {"include_usage": stream},
           "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]})
    .to_string()
}

/// The chunk JSONs of a stream, `[DONE]` checked and left out.
fn deltas(chunks: &[Value]) -> Vec<Value> {
    chunks
        .iter()
        .map(|c| {
            assert_eq!(c["object"], "chat.completion.chunk");
            match c["choices"].as_array().and_then(|a| a.first()) {
                Some(choice) => json!([choice["delta"], choice["finish_reason"]]),
                None => json!({"usage": c["usage"]}),
            }
        })
        .collect()
}

#[tokio::test]
async fn a_whole_answer_from_the_filled_body() {
    let mock = Mock::start(|_| {
        Plan::json(
            200,
            json!({"result": {"output": "Hello!", "finish": "max_tokens", "tokens": {"input": 9, "output": 2}}}),
        )
    })
    .await;
    let gw = Gateway::start(&http_config(&mock));
    let reply = Client::new()
        .post(
            &gw.url("/v1/chat/completions"),
            &[],
            json!({"model": "api", "max_tokens": 32, "seed": 4,
                   "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]})
            .to_string(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let v = reply.json();
    assert_eq!(v["model"], "api");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello!");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11})
    );

    let got = mock.last();
    assert_eq!(
        (got.method.as_str(), got.path.as_str()),
        ("POST", "/v2/generate")
    );
    assert_eq!(got.header("x-api-key"), Some("sk-rest-SECRET"));
    assert_eq!(got.header("authorization"), None);
    assert_eq!(got.header("x-tenant"), Some("search"));
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(got.header("accept"), Some("application/json"));
    assert_eq!(
        got.json(),
        json!({
            "model": "gen-1",
            "input": {"text": "System: Be brief.\n\nUser: Say hello", "system": "Be brief."},
            "parameters": {"max_new_tokens": 32, "temperature": null, "top_p": null, "seed": 4},
            "stream": false,
            "tag": "switchyard/gen-1"
        })
    );

    // An error inside a 200 answer.
    mock.set(|_| Plan::json(200, json!({"error": {"message": "model is loading"}})));
    let reply = Client::new()
        .post(&gw.url("/v1/chat/completions"), &[], chat("api", false))
        .await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert!(
        reply.text().contains("model is loading"),
        "{}",
        reply.text()
    );

    // Backend statuses keep their SPEC meaning.
    mock.set(|_| Plan::json(400, json!({"message": "prompt too long"})));
    let reply = Client::new()
        .post(&gw.url("/v1/chat/completions"), &[], chat("api", false))
        .await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert_eq!(reply.json()["error"]["message"], "prompt too long");
}

#[tokio::test]
async fn an_ndjson_stream_is_relayed_delta_by_delta() {
    let mock = Mock::start(|req| {
        assert_eq!(req.json()["stream"], true);
        Plan {
            status: 200,
            headers: vec![("content-type".into(), "application/x-ndjson".into())],
            steps: [
                r#"{"chunk":"Hel","final":false}"#,
                r#"{"chunk":"lo","final":false}"#,
                r#"{"chunk":"","final":true,"finish":"stop","tokens":{"input":9,"output":2}}"#,
            ]
            .iter()
            .map(|l| Step::Send(Bytes::from(format!("{l}\n"))))
            .collect(),
        }
    })
    .await;
    let gw = Gateway::start(&http_config(&mock));
    let reply = Client::new()
        .post(&gw.url("/v1/chat/completions"), &[], chat("api", true))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("text/event-stream"));
    let chunks = reply.chunks();
    assert_eq!(
        deltas(&chunks),
        vec![
            json!([{"role": "assistant", "content": ""}, null]),
            json!([{"content": "Hel"}, null]),
            json!([{"content": "lo"}, null]),
            json!([{}, "stop"]),
            json!({"usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}}),
        ]
    );
    assert!(
        chunks
            .iter()
            .all(|c| c["model"] == "api" && c["id"] == chunks[0]["id"])
    );
    let got = mock.last();
    assert_eq!(got.header("accept"), Some("application/x-ndjson"));
    assert_eq!(got.json()["stream"], true);
}

#[tokio::test]
async fn an_sse_stream_and_an_error_in_the_middle_of_it() {
    let gate = Arc::new(Notify::new());
    let g = gate.clone();
    let mock = Mock::start(move |req| {
        if req.json()["prompt"] == "fail" {
            return Plan::sse(vec![
                Step::Send(Bytes::from_static(
                    b"data: {\"delta\":{\"text\":\"Hel\"}}\n\n",
                )),
                Step::Wait(g.clone()),
                Step::Send(Bytes::from_static(
                    b"data: {\"error\":{\"message\":\"GPU fell over\"}}\n\n",
                )),
            ]);
        }
        Plan::sse(vec![
            Step::Send(Bytes::from_static(
                b": ping\n\nevent: delta\ndata: {\"delta\":{\"text\":\"Hel\"}}\n\n",
            )),
            Step::Send(Bytes::from_static(b"data: {\"delta\":{\"text\":\"lo\"}")),
            Step::Send(Bytes::from_static(
                b"}\n\ndata: {\"finish\":\"SAFETY\"}\n\ndata: [DONE]\n\n",
            )),
        ])
    })
    .await;
    let gw = Gateway::start(&http_config(&mock));
    let client = Client::new();
    let reply = client
        .post(&gw.url("/v1/chat/completions"), &[], chat("sse", true))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        deltas(&reply.chunks()),
        vec![
            json!([{"role": "assistant", "content": ""}, null]),
            json!([{"content": "Hel"}, null]),
            json!([{"content": "lo"}, null]),
            json!([{}, "content_filter"]),
            json!({"usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}),
        ]
    );
    assert_eq!(mock.last().header("accept"), Some("text/event-stream"));
    assert_eq!(
        mock.last().json(),
        json!({"prompt": "Say hello", "stream": true})
    );

    let body =
        json!({"model": "sse", "stream": true, "messages": [{"role": "user", "content": "fail"}]});
    let mut stream = client
        .open(&gw.url("/v1/chat/completions"), &[], body.to_string())
        .await;
    assert_eq!(stream.status, 200);
    stream.read_until("Hel").await;
    gate.notify_one();
    let rest = stream.rest().await;
    let events = support::client::sse_data(&rest);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{rest}");
    let error: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("provider sse") && message.contains("GPU fell over"),
        "{rest}"
    );
}

#[tokio::test]
async fn without_a_stream_section_the_stream_is_synthesized() {
    let mock = Mock::start(|_| Plan::json(200, json!({"text": "Whole answer", "n": 2}))).await;
    let gw = Gateway::start(&http_config(&mock));
    let reply = Client::new()
        .post(&gw.url("/v1/chat/completions"), &[], chat("whole", true))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        deltas(&reply.chunks()),
        vec![
            json!([{"role": "assistant", "content": ""}, null]),
            json!([{"content": "Whole answer"}, null]),
            json!([{}, "stop"]),
            json!({"usage": {"prompt_tokens": 0, "completion_tokens": 2, "total_tokens": 2}}),
        ]
    );
    assert_eq!(mock.last().json()["stream"], false);
    assert_eq!(mock.last().header("accept"), Some("application/json"));
}

// === WebSocket ===

/// What the WebSocket mock saw of one connection.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: HeaderMap,
    frame: Value,
}

struct WsMock {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Connections the gateway closed (or dropped) after the answer.
    closed: watch::Receiver<usize>,
}

impl WsMock {
    /// Answers each request frame with `script`'s frames, then waits for the
    /// gateway to close; refuses the upgrade (401) on the path `/refuse`.
    async fn start(script: impl Fn(&Value) -> Vec<Value> + Send + Sync + 'static) -> WsMock {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (closed_tx, closed) = watch::channel(0);
        let script = Arc::new(script);
        let (seen2, closed_tx) = (seen.clone(), Arc::new(closed_tx));
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (seen, closed_tx, script) = (seen2.clone(), closed_tx.clone(), script.clone());
                tokio::spawn(async move {
                    let head = Arc::new(Mutex::new(None));
                    let h = head.clone();
                    // The signature is tungstenite's.
                    #[allow(clippy::result_large_err)]
                    let callback = move |req: &Request, resp: Response| {
                        *h.lock().unwrap() =
                            Some((req.uri().path().to_owned(), req.headers().clone()));
                        if req.uri().path() == "/refuse" {
                            let mut e = ErrorResponse::new(Some("bad credentials".into()));
                            *e.status_mut() = http::StatusCode::UNAUTHORIZED;
                            return Err(e);
                        }
                        Ok(resp)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await
                    else {
                        return;
                    };
                    let Some(Ok(Message::Text(text))) = ws.next().await else {
                        return;
                    };
                    let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                    let (path, headers) = head.lock().unwrap().take().unwrap();
                    seen.lock().unwrap().push(Seen {
                        path,
                        headers,
                        frame: frame.clone(),
                    });
                    for f in script(&frame) {
                        if ws.send(Message::text(f.to_string())).await.is_err() {
                            break;
                        }
                    }
                    // Never closes first: waits until the gateway closes or drops the socket.
                    while let Some(Ok(message)) = ws.next().await {
                        if message.is_close() {
                            break;
                        }
                    }
                    closed_tx.send_modify(|n| *n += 1);
                });
            }
        });
        WsMock { addr, seen, closed }
    }

    fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request frame")
    }

    async fn wait_closed(&mut self, at_least: usize) {
        tokio::time::timeout(
            Duration::from_secs(10),
            self.closed.wait_for(|n| *n >= at_least),
        )
        .await
        .expect("the gateway closes the socket")
        .unwrap();
    }
}

fn ws_config(ws: &WsMock) -> String {
    format!(
        r#"auth: {{required: false}}
providers:
  socket:
    type: rest
    transport: websocket
    url: {url}
    api_key: sk-ws-SECRET
    headers: {{x-tenant: search}}
    body: {{prompt: "{{{{last_user_message}}}}", model: "{{{{model}}}}", stream: "{{{{stream}}}}", max: "{{{{max_tokens}}}}"}}
    stream: {{delta: /token, done: /done, prompt_tokens: /usage/in, completion_tokens: /usage/out, finish_reason: /reason, error: /error}}
  refused:
    type: rest
    transport: websocket
    url: {refuse}
    body: {{prompt: "{{{{prompt}}}}"}}
    stream: {{delta: /token}}
  nowhere:
    type: rest
    transport: websocket
    url: ws://127.0.0.1:1/socket
    body: {{prompt: "{{{{prompt}}}}"}}
    stream: {{delta: /token}}
models:
  socket: {{targets: [{{provider: socket, model: ws-model}}]}}
  nowhere: {{targets: [{{provider: nowhere}}]}}
  refused: {{targets: [{{provider: refused}}]}}
"#,
        url = ws.url("/v1/generate"),
        refuse = ws.url("/refuse"),
    )
}

fn ws_frames(frame: &Value) -> Vec<Value> {
    if frame["prompt"] == "hold" {
        return vec![json!({"token": "Hel"})];
    }
    if frame["prompt"] == "fail" {
        return vec![json!({"token": "Hel"}), json!({"error": "model crashed"})];
    }
    vec![
        json!({"token": "Hel"}),
        json!({"token": "lo"}),
        json!({"done": true, "reason": "length", "usage": {"in": 3, "out": 2}}),
        json!({"token": "after the end"}),
    ]
}

#[tokio::test]
async fn a_websocket_round_trip_for_a_whole_answer() {
    let mut ws = WsMock::start(ws_frames).await;
    let gw = Gateway::start(&ws_config(&ws));
    let reply = Client::new()
        .post(
            &gw.url("/v1/chat/completions"),
            &[("x-request-id", "req-ws-1")],
            chat("socket", false),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let v = reply.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5})
    );
    let seen = ws.last();
    assert_eq!(seen.path, "/v1/generate");
    assert_eq!(
        seen.headers
            .get("authorization")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer sk-ws-SECRET")
    );
    assert_eq!(seen.headers["x-tenant"], "search");
    assert_eq!(seen.headers["x-request-id"], "req-ws-1");
    assert_eq!(
        seen.frame,
        json!({"prompt": "Say hello", "model": "ws-model", "stream": false, "max": null})
    );
    // The server never closes: the gateway does, after the end marker.
    ws.wait_closed(1).await;
}

#[tokio::test]
async fn a_websocket_round_trip_streamed() {
    let mut ws = WsMock::start(ws_frames).await;
    let gw = Gateway::start(&ws_config(&ws));
    let reply = Client::new()
        .post(&gw.url("/v1/chat/completions"), &[], chat("socket", true))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        deltas(&reply.chunks()),
        vec![
            json!([{"role": "assistant", "content": ""}, null]),
            json!([{"content": "Hel"}, null]),
            json!([{"content": "lo"}, null]),
            json!([{}, "length"]),
            json!({"usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}),
        ]
    );
    assert_eq!(ws.last().frame["stream"], true);
    ws.wait_closed(1).await;

    // An error frame mid-stream: an error event, then [DONE].
    let body = json!({"model": "socket", "stream": true, "messages": [{"role": "user", "content": "fail"}]});
    let reply = Client::new()
        .post(&gw.url("/v1/chat/completions"), &[], body.to_string())
        .await;
    let events = reply.events();
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("model crashed"),
        "{events:?}"
    );
}

#[tokio::test]
async fn the_socket_closes_when_the_client_leaves() {
    let mut ws = WsMock::start(ws_frames).await;
    let gw = Gateway::start(&ws_config(&ws));
    let body = json!({"model": "socket", "stream": true, "messages": [{"role": "user", "content": "hold"}]});
    let mut stream = Client::new()
        .open(&gw.url("/v1/chat/completions"), &[], body.to_string())
        .await;
    assert_eq!(stream.status, 200);
    stream.read_until("Hel").await;
    assert_eq!(*ws.closed.borrow(), 0, "the answer is still open");
    drop(stream);
    ws.wait_closed(1).await;
}

#[tokio::test]
async fn websocket_failures_map_like_http_ones() {
    let ws = WsMock::start(ws_frames).await;
    let gw = Gateway::start(&ws_config(&ws));
    let client = Client::new();
    let reply = client
        .post(&gw.url("/v1/chat/completions"), &[], chat("refused", false))
        .await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(
        reply.json()["error"]["message"],
        "provider refused rejected the gateway's credentials"
    );
    let reply = client
        .post(&gw.url("/v1/chat/completions"), &[], chat("nowhere", false))
        .await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("provider nowhere is unreachable"),
        "{message}"
    );
}

#[test]
fn check_reports_bad_placeholders_and_pointers_at_their_path() {
    let dir = TempDir::new();
    let path = dir.path().join("c.yaml");
    let text = format!(
        "providers:\n{}models:\n  api: {{targets: [{{provider: api}}]}}\n",
        http_provider("http://127.0.0.1:1/v2/generate")
            .replace("{{request.seed}}", "{{request.}}")
            .replace("delta: /chunk", "delta: chunk")
    );
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["check", "--config"])
        .arg(&path)
        .env_remove("SWITCHYARD_CONFIG")
        .output()
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{printed}");
    assert!(
        printed.contains(
            "providers.api.body.parameters.seed: `{{request.}}` must name one top-level field"
        ),
        "{printed}"
    );
    assert!(
        printed.contains("providers.api.stream.delta: "),
        "{printed}"
    );
}
