//! Thousands of malformed requests: every one gets a clean 4xx in the OpenAI
//! error shape (or, where a mutation happens to leave a valid request, a 200),
//! nothing panics, and normal traffic keeps flowing throughout.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{Client, Gateway, chat};

const CONFIG: &str = "auth: {required: false}\n\
limits: {max_request_body: 64KiB, max_header_bytes: 16KiB}\n\
providers: {demo: {type: demo, pace: 0s}}\n\
models: {m: {targets: [{provider: demo}]}}\n";

/// Sends raw bytes as one HTTP/1.1 request; returns status, head and body.
async fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    support::read_answer(&mut stream).await
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn post(path: &str, body: &[u8], extra: &str) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// A response is clean: a 4xx in the OpenAI shape, or a 200 with JSON.
fn assert_clean(case: &str, status: u16, head: &str, body: &[u8]) {
    assert!(
        status == 200 || (400..500).contains(&status),
        "{case}: status {status}: {}",
        String::from_utf8_lossy(body)
    );
    assert!(
        head.to_lowercase().contains("x-request-id:"),
        "{case}: no x-request-id"
    );
    if status == 200 && head.to_lowercase().contains("text/event-stream") {
        // A mutation that left a valid streaming request: a whole stream came back.
        assert!(
            find(body, b"data: [DONE]").is_some(),
            "{case}: unfinished stream"
        );
        return;
    }
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "{case}: body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(body)
        )
    });
    if status != 200 {
        let e = &v["error"];
        assert!(
            e["message"].is_string() && e["type"].is_string(),
            "{case}: {v}"
        );
        assert!(
            e.get("param").is_some() && e.get("code").is_some(),
            "{case}: {v}"
        );
    }
}

fn cases() -> Vec<(String, Vec<u8>)> {
    let valid = br#"{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hello \u00e9 world"}],"stream":false,"max_tokens":8}"#;
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    let chat_path = "/v1/chat/completions";

    // Every truncation of a valid body.
    for n in 0..valid.len() {
        cases.push((
            format!("truncated at {n}"),
            post(chat_path, &valid[..n], ""),
        ));
    }
    // Random byte mutations, seeded so a failure can be replayed.
    let mut rng = fastrand::Rng::with_seed(7);
    for i in 0..2500 {
        let mut body = valid.to_vec();
        for _ in 0..rng.usize(1..4) {
            let at = rng.usize(..body.len());
            body[at] = rng.u8(..);
        }
        cases.push((format!("mutation {i}"), post(chat_path, &body, "")));
    }
    // Wrong types in every field the gateway reads.
    let values = [
        "1",
        "-1",
        "1.5",
        "1e400",
        "\"x\"",
        "true",
        "null",
        "[]",
        "{}",
        "[1]",
        "[{}]",
        "[{\"role\":5}]",
    ];
    for field in [
        "model",
        "messages",
        "stream",
        "stream_options",
        "max_tokens",
        "max_completion_tokens",
    ] {
        for v in values {
            let mut doc: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(valid).unwrap();
            doc.remove(field);
            let mut body = serde_json::to_string(&doc).unwrap();
            body.insert_str(1, &format!("\"{field}\":{v},"));
            for path in [chat_path, "/v1/completions", "/v1/embeddings"] {
                cases.push((
                    format!("{path} {field}={v}"),
                    post(path, body.as_bytes(), ""),
                ));
            }
        }
    }
    // Invalid UTF-8 in strings and keys.
    for bad in [
        &b"\xff"[..],
        b"\xc3",
        b"\xe2\x82",
        b"\xc0\xaf",
        b"\xed\xa0\x80",
        b"\xf8\x88\x80\x80\x80",
    ] {
        let mut body = br#"{"model":"m","messages":[{"role":"user","content":"a"#.to_vec();
        body.extend_from_slice(bad);
        body.extend_from_slice(br#""}]}"#);
        cases.push((
            "invalid utf-8 in a value".into(),
            post(chat_path, &body, ""),
        ));
        let mut body = b"{\"mo".to_vec();
        body.extend_from_slice(bad);
        body.extend_from_slice(br#"del":"m","messages":[{"role":"user"}]}"#);
        cases.push(("invalid utf-8 in a key".into(), post(chat_path, &body, "")));
    }
    // Deep nesting, huge numbers, junk.
    let deep = format!(
        "{{\"model\":\"m\",\"messages\":{}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    cases.push(("deep nesting".into(), post(chat_path, deep.as_bytes(), "")));
    cases.push((
        "binary junk".into(),
        post(
            chat_path,
            &(0..=255u8).cycle().take(4000).collect::<Vec<_>>(),
            "",
        ),
    ));
    // Oversized bodies and headers.
    let big = format!(
        "{{\"model\":\"m\",\"messages\":[{{\"role\":\"user\",\"content\":\"{}\"}}]}}",
        "z".repeat(70_000)
    );
    cases.push((
        "body over the limit".into(),
        post(chat_path, big.as_bytes(), ""),
    ));
    cases.push((
        "declared length over the limit".into(),
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 999999999\r\n\r\n{"
            .to_vec(),
    ));
    let padding = format!("x-padding: {}\r\n", "p".repeat(20_000));
    cases.push(("huge header".into(), post(chat_path, valid, &padding)));
    let many: String = (0..200)
        .map(|i| format!("x-h{i}: {}\r\n", "v".repeat(100)))
        .collect();
    cases.push(("many headers".into(), post(chat_path, valid, &many)));
    // Unknown paths and methods.
    for method in ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"] {
        for path in [
            "/v1/chat/completions",
            "/v1/embeddings",
            "/v2/chat",
            "/",
            "/v1/models/../../etc/passwd",
            "/%ff%fe",
            "/v1/chat/completions?x=1",
        ] {
            let request = format!(
                "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}"
            );
            cases.push((format!("{method} {path}"), request.into_bytes()));
        }
    }
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_clean_errors_and_normal_traffic_flows() {
    let mut gw = Gateway::start(CONFIG);
    let addr = gw.addr;
    let cases = cases();
    let total = cases.len();
    assert!(total > 2500, "{total} cases");

    let mut chunks: Vec<Vec<(String, Vec<u8>)>> = (0..8).map(|_| Vec::new()).collect();
    for (i, case) in cases.into_iter().enumerate() {
        chunks[i % 8].push(case);
    }
    let mut workers = Vec::new();
    for chunk in chunks {
        let url = gw.url("/v1/chat/completions");
        workers.push(tokio::spawn(async move {
            let client = Client::new();
            let mut normal = 0;
            for (i, (name, request)) in chunk.into_iter().enumerate() {
                let (status, head, body) = raw(addr, &request).await;
                if name.starts_with("OPTIONS")
                    || name.starts_with("TRACE")
                    || name.starts_with("GET /v1/models")
                {
                    assert!(
                        (400..500).contains(&status) || status == 200,
                        "{name}: {status}"
                    );
                } else {
                    assert_clean(&name, status, &head, &body);
                }
                if i % 25 == 0 {
                    let reply = client.post(&url, &[], chat("m", false)).await;
                    assert_eq!(reply.status, 200, "normal traffic failed after {name}");
                    normal += 1;
                }
            }
            normal
        }));
    }
    let mut normal = 0;
    for w in workers {
        normal += w.await.unwrap();
    }
    assert!(normal > 50);
    assert!(gw.is_running(), "the gateway is still up");
    assert!(
        !gw.logs().iter().any(|l| l.contains("panicked")),
        "no panic in the log"
    );
}

#[tokio::test]
async fn an_endless_body_is_cut_off_with_413() {
    let gw = Gateway::start(CONFIG);
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n",
        )
        .await
        .unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let sender = tokio::spawn(async move {
        let chunk = format!("10000\r\n{}\r\n", "a".repeat(0x10000));
        // Keep sending until the gateway stops reading: the body never ends.
        while writer.write_all(chunk.as_bytes()).await.is_ok() {}
    });
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    let read = async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = reader.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed without a response");
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("a response");
    let head = String::from_utf8_lossy(&got);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    sender.abort();
}

#[tokio::test]
async fn a_body_announced_over_the_limit_is_refused_before_it_is_sent() {
    // Nothing of the body follows the head: only the declared length can
    // have refused it (waiting for it would end in a 408).
    let gw = Gateway::start(&CONFIG.replace("limits:", "timeouts: {client_body: 30s}\nlimits:"));
    let (status, head, body) = raw(
        gw.addr,
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000\r\n\r\n",
    )
    .await;
    assert_eq!(status, 413, "{head}");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "request_too_large");
}

#[tokio::test]
async fn a_client_that_never_finishes_its_body_gets_408() {
    let gw = Gateway::start(&CONFIG.replace("limits:", "timeouts: {client_body: 200ms}\nlimits:"));
    let (status, _, body) = raw(
        gw.addr,
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"model\":",
    )
    .await;
    assert_eq!(status, 408);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "request_timeout");
}

#[tokio::test]
async fn client_header_closes_a_slow_head_and_an_idle_keep_alive_connection() {
    let gw =
        Gateway::start(&CONFIG.replace("limits:", "timeouts: {client_header: 200ms}\nlimits:"));
    let mut slow = TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut idle = TcpStream::connect(gw.addr).await.unwrap();
    idle.write_all(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (status, _, _) = support::read_answer(&mut idle).await;
    assert_eq!(status, 200);
    for (what, stream) in [
        ("a head that never ends", &mut slow),
        ("an idle keep-alive connection", &mut idle),
    ] {
        let mut rest = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
        assert!(
            matches!(read, Ok(Ok(_)) | Ok(Err(_))),
            "{what} is closed within a few client_header periods"
        );
        assert!(
            rest.is_empty() || rest.starts_with(b"HTTP/1.1 408"),
            "{what}: {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
}
