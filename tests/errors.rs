//! Every error row of the contract, always in the OpenAI error shape.

mod support;

use serde_json::json;
use support::mock::{Plan, Step};
use support::{Client, Gateway, Mock, chat};

fn config(mock: &Mock) -> String {
    config_at(&mock.url("/v1"))
}

fn config_at(base: &str) -> String {
    format!(
        "auth: {{required: false}}\n\
         limits: {{max_request_body: 4KiB, max_header_bytes: 8KiB}}\n\
         providers:\n\
         \x20 p:\n    type: openai\n    base_url: {base}\n    api_key: sk-provider-SECRET-42\n    timeouts: {{first_byte: 300ms}}\n\
         \x20 dead:\n    type: openai\n    base_url: http://127.0.0.1:1/v1\n\
         models:\n  m: {{targets: [{{provider: p, model: x}}]}}\n  down: {{targets: [{{provider: dead, model: x}}]}}\n"
    )
}

#[tokio::test]
async fn malformed_requests_are_400() {
    let mock = Mock::openai().await;
    let gw = Gateway::start(&config(&mock));
    let client = Client::new();
    let url = gw.url("/v1/chat/completions");
    for body in [
        "{\"model\": \"m\", \"messages\": [",
        "not json",
        "[]",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
        "{\"model\":\"m\"}",
        "{\"model\":\"m\",\"messages\":[]}",
        "{\"model\":7,\"messages\":[{\"role\":\"user\"}]}",
        "{\"model\":\"m\",\"messages\":[{\"role\":\"user\"}],\"stream\":\"yes\"}",
        "",
    ] {
        let reply = client.post(&url, &[], body).await;
        reply.assert_error(400, "invalid_request_error", None);
    }
    let reply = client.post(&url, &[], "{\"model\":\"m\"}").await;
    assert_eq!(reply.json()["error"]["param"], "messages");
    assert_eq!(mock.hits(), 0);
}

#[tokio::test]
async fn unknown_paths_and_methods() {
    let mock = Mock::openai().await;
    let gw = Gateway::start(&config(&mock));
    let client = Client::new();
    let reply = client.post(&gw.url("/v1/responses"), &[], "{}").await;
    reply.assert_error(404, "invalid_request_error", Some("unknown_url"));
    let reply = client.get(&gw.url("/"), &[]).await;
    reply.assert_error(404, "invalid_request_error", Some("unknown_url"));
    let reply = client.get(&gw.url("/v1/chat/completions"), &[]).await;
    reply.assert_error(405, "invalid_request_error", Some("method_not_allowed"));
    assert_eq!(reply.header("allow"), Some("POST"));
}

#[tokio::test]
async fn oversized_bodies_and_headers() {
    let mock = Mock::openai().await;
    let gw = Gateway::start(&config(&mock));
    let client = Client::new();
    let big = format!(
        "{{\"model\":\"m\",\"messages\":[{{\"role\":\"user\",\"content\":\"{}\"}}]}}",
        "x".repeat(8000)
    );
    let reply = client.post(&gw.url("/v1/chat/completions"), &[], big).await;
    reply.assert_error(413, "invalid_request_error", Some("request_too_large"));
    let huge = "y".repeat(10_000);
    let reply = client
        .post(
            &gw.url("/v1/chat/completions"),
            &[("x-padding", &huge)],
            chat("m", false),
        )
        .await;
    reply.assert_error(
        431,
        "invalid_request_error",
        Some("request_header_fields_too_large"),
    );
    assert_eq!(mock.hits(), 0);
}

#[tokio::test]
async fn backend_client_errors_keep_their_status() {
    let mock = Mock::openai().await;
    let gw = Gateway::start(&config(&mock));
    let client = Client::new();
    for (status, body, code) in [
        (
            400,
            json!({"error": {"message": "max_tokens is too large", "type": "BadRequestError", "code": 400}}),
            Some("400"),
        ),
        (
            404,
            json!({"object": "error", "message": "The model `x` does not exist.", "code": 404}),
            Some("404"),
        ),
        (
            422,
            json!({"error": {"message": "context too long", "code": "context_length_exceeded"}}),
            Some("context_length_exceeded"),
        ),
        (
            400,
            json!({"error": "'response_format.type' must be 'json_schema' or 'text'"}),
            None,
        ),
    ] {
        let b = body.clone();
        mock.set(move |_| Plan::json(status, b.clone()));
        let reply = client
            .post(&gw.url("/v1/chat/completions"), &[], chat("m", false))
            .await;
        reply.assert_error(status, "invalid_request_error", code);
        let message = reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        let expected = body["error"]["message"]
            .as_str()
            .or(body["message"].as_str())
            .or(body["error"].as_str())
            .unwrap();
        assert_eq!(message, expected);
    }
}

#[tokio::test]
async fn backend_failures_are_502_and_name_the_provider() {
    let mock = Mock::openai().await;
    let gw = Gateway::start(&config(&mock));
    let client = Client::new();
    let url = gw.url("/v1/chat/completions");

    mock.set(|_| Plan::json(500, json!({"error": {"message": "engine crashed"}})));
    let reply = client.post(&url, &[], chat("m", false)).await;
    reply.assert_error(502, "upstream_error", Some("upstream_error"));
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("provider p") && message.contains("engine crashed"),
        "{message}"
    );

    // A backend that echoes the provider key: it never reaches the client.
    mock.set(|_| {
        Plan::json(
            503,
            json!({"error": {"message": "bad upstream token sk-provider-SECRET-42"}}),
        )
    });
    let reply = client.post(&url, &[], chat("m", false)).await;
    reply.assert_error(502, "upstream_error", Some("upstream_error"));
    assert!(
        !reply.text().contains("sk-provider-SECRET-42"),
        "{}",
        reply.text()
    );

    mock.set(|_| {
        Plan::json(
            401,
            json!({"error": {"message": "Incorrect API key provided: sk-prov***42"}}),
        )
    });
    let reply = client.post(&url, &[], chat("m", false)).await;
    reply.assert_error(502, "upstream_error", Some("upstream_error"));
    assert_eq!(
        reply.json()["error"]["message"],
        "provider p rejected the gateway's credentials"
    );

    let reply = client.post(&url, &[], chat("down", false)).await;
    reply.assert_error(502, "upstream_error", Some("upstream_error"));
    assert!(reply.text().contains("provider dead"));

    mock.set(|_| Plan::text(502, "<html>bad gateway</html>"));
    let reply = client.post(&url, &[], chat("m", false)).await;
    reply.assert_error(502, "upstream_error", Some("upstream_error"));

    let logs = gw.logs().join("\n");
    assert!(
        !logs.contains("sk-provider-SECRET-42"),
        "the provider key is never logged"
    );
}

#[tokio::test]
async fn backend_rate_limits_are_429_with_retry_after() {
    let mock = Mock::start(|_| {
        Plan::json(
            429,
            json!({"error": {"message": "slow down", "type": "requests"}}),
        )
        .header("retry-after", "7")
    })
    .await;
    let gw = Gateway::start(&config(&mock));
    let reply = Client::new()
        .post(&gw.url("/v1/chat/completions"), &[], chat("m", false))
        .await;
    reply.assert_error(429, "rate_limit_error", Some("upstream_rate_limited"));
    assert_eq!(reply.header("retry-after"), Some("7"));
}

#[tokio::test]
async fn a_backend_that_does_not_answer_is_504() {
    let mock = Mock::start(|_| Plan::sse(vec![Step::Hang])).await;
    let gw = Gateway::start(&config(&mock));
    let reply = Client::new()
        .post(&gw.url("/v1/chat/completions"), &[], chat("m", true))
        .await;
    reply.assert_error(504, "upstream_error", Some("upstream_timeout"));
    assert!(reply.text().contains("provider p"));
}

#[tokio::test]
async fn a_backend_that_sends_garbage_is_502() {
    let mock = Mock::start(|_| Plan::text(200, "this is not json")).await;
    let gw = Gateway::start(&config(&mock));
    let reply = Client::new()
        .post(&gw.url("/v1/chat/completions"), &[], chat("m", false))
        .await;
    reply.assert_error(502, "upstream_error", Some("upstream_error"));
}

/// A backend on a bare socket: reads each request whole, writes `answer`
/// and closes the connection.
async fn bare_backend(answer: &'static [u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut io, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&request[..end]).to_lowercase();
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .map_or(0, |n| n.trim().parse().unwrap());
                        if request.len() >= end + 4 + length {
                            break;
                        }
                    }
                    match io.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = io.write_all(answer).await;
            });
        }
    });
    format!("http://{address}/v1")
}

#[tokio::test]
async fn a_backend_that_breaks_http_is_502_naming_the_provider() {
    for answer in [
        // Not HTTP at all.
        &b"SSH-2.0-OpenSSH_9.6\r\n\r\n"[..],
        // Closed before the body it announced.
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n{\"id\":",
        // Closed before answering.
        b"",
        // A chunked body that breaks its framing.
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    ] {
        let base = bare_backend(answer).await;
        let gw = Gateway::start(&config_at(&base));
        let reply = Client::new()
            .post(&gw.url("/v1/chat/completions"), &[], chat("m", false))
            .await;
        reply.assert_error(502, "upstream_error", Some("upstream_error"));
        assert!(reply.text().contains("provider p"), "{}", reply.text());
        assert!(!reply.text().contains("SECRET"), "{}", reply.text());
    }
}
