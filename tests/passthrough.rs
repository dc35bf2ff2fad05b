//! `type: openai` passthrough: shapes, extra fields, model rewrite, streaming
//! chunk by chunk, and cancellation when the client leaves.

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use support::mock::{self, Plan, Step, chunk, done, event};
use support::{Client, Gateway, Mock, chat};
use tokio::sync::Notify;

fn config(mock: &Mock, base_suffix: &str) -> String {
    format!(
        "auth: {{required: false}}\n\
         providers:\n  vllm:\n    type: openai\n    base_url: {}{base_suffix}\n\
         models:\n  chat-default:\n    targets: [{{provider: vllm, model: meta-llama/Llama-3.1-8B-Instruct}}]\n",
        mock.url("/v1")
    )
}

#[tokio::test]
async fn non_streaming_round_trip_has_the_openai_shape() {
    let mock = Mock::openai().await;
    let gw = Gateway::start(&config(&mock, ""));
    let reply = Client::new()
        .post(
            &gw.url("/v1/chat/completions"),
            &[],
            chat("chat-default", false),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let v = reply.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["model"], "chat-default",
        "responses carry the alias the client sent"
    );
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello world");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["total_tokens"], 7);
    assert_eq!(reply.header("x-switchyard-provider"), Some("vllm"));
    assert_eq!(
        reply.header("x-switchyard-model"),
        Some("meta-llama/Llama-3.1-8B-Instruct")
    );
    assert!(
        reply
            .header("x-request-id")
            .is_some_and(|id| !id.is_empty())
    );
    assert_eq!(reply.header("content-type"), Some("application/json"));

    let sent = mock.last();
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(sent.json()["model"], "meta-llama/Llama-3.1-8B-Instruct");
}

#[tokio::test]
async fn every_other_field_reaches_the_backend_untouched() {
    let mock = Mock::openai().await;
    let gw = Gateway::start(&config(&mock, "/"));
    let body = r#"{"model":"chat-default","messages":[{"role":"user","content":"Give JSON \u00e9"}],"guided_json":{"type":"object","properties":{"a":{"type":"integer"}}},"min_tokens":3,"top_k":-1,"chat_template_kwargs":{"enable_thinking":false},"temperature":0.25,"stream":false}"#;
    let reply = Client::new()
        .post(&gw.url("/v1/chat/completions"), &[], body)
        .await;
    assert_eq!(reply.status, 200);
    let sent = mock.last();
    let expected = body.replace(
        r#""model":"chat-default""#,
        r#""model":"meta-llama/Llama-3.1-8B-Instruct""#,
    );
    assert_eq!(
        std::str::from_utf8(&sent.body).unwrap(),
        expected,
        "only `model` changes, byte for byte"
    );
    assert_eq!(
        sent.path, "/v1/chat/completions",
        "a trailing slash on base_url is ignored"
    );
}

#[tokio::test]
async fn the_request_id_is_kept_and_forwarded() {
    let mock = Mock::openai().await;
    let gw = Gateway::start(&config(&mock, ""));
    let reply = Client::new()
        .post(
            &gw.url("/v1/chat/completions"),
            &[("x-request-id", "req-abc-123")],
            chat("chat-default", false),
        )
        .await;
    assert_eq!(reply.header("x-request-id"), Some("req-abc-123"));
    assert_eq!(mock.last().header("x-request-id"), Some("req-abc-123"));
}

#[tokio::test]
async fn a_request_without_an_id_gets_a_fresh_one() {
    let mock = Mock::openai().await;
    let gw = Gateway::start(&config(&mock, ""));
    let client = Client::new();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let reply = client
            .post(
                &gw.url("/v1/chat/completions"),
                &[],
                chat("chat-default", false),
            )
            .await;
        let id = reply.header("x-request-id").expect("an id").to_owned();
        assert!(
            id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "{id}"
        );
        // The backend sees the same id.
        assert_eq!(mock.last().header("x-request-id"), Some(id.as_str()));
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1]);
}

#[tokio::test]
async fn the_backend_gets_each_header_once_with_the_credential_winning() {
    let mock = Mock::openai().await;
    let gw = Gateway::start(&format!(
        "auth: {{required: false}}\n\
         providers:\n  vllm:\n    type: openai\n    base_url: {}\n    api_key: sk-provider-key\n\
         \x20   headers: {{x-tenant: search, authorization: Bearer configured, accept: application/x-custom}}\n\
         models:\n  chat-default:\n    targets: [{{provider: vllm, model: m}}]\n",
        mock.url("/v1")
    ));
    let client = Client::new();
    for stream in [false, true] {
        let reply = client
            .post(
                &gw.url("/v1/chat/completions"),
                &[("x-request-id", "req-hdr-1")],
                chat("chat-default", stream),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let sent = mock.last();
        for name in [
            "authorization",
            "x-tenant",
            "accept",
            "content-type",
            "user-agent",
            "x-request-id",
            "host",
            "content-length",
        ] {
            assert_eq!(
                sent.headers.get_all(name).iter().count(),
                1,
                "{name} once (stream: {stream})"
            );
        }
        assert_eq!(sent.header("authorization"), Some("Bearer sk-provider-key"));
        assert_eq!(sent.header("x-tenant"), Some("search"));
        assert_eq!(
            sent.header("accept"),
            Some("application/x-custom"),
            "configured headers win over the dialect's"
        );
        assert_eq!(sent.header("content-type"), Some("application/json"));
        assert_eq!(sent.header("x-request-id"), Some("req-hdr-1"));
        assert!(
            sent.header("user-agent")
                .is_some_and(|ua| ua.starts_with("switchyard/"))
        );
    }
}

#[tokio::test]
async fn completions_and_embeddings_pass_through() {
    let mock = Mock::openai().await;
    let gw = Gateway::start(&config(&mock, ""));
    let client = Client::new();
    let reply = client
        .post(
            &gw.url("/v1/completions"),
            &[],
            r#"{"model":"chat-default","prompt":"Hello","max_tokens":5,"echo":false}"#,
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["object"], "text_completion");
    assert_eq!(reply.json()["model"], "chat-default");
    assert_eq!(mock.last().path, "/v1/completions");
    assert_eq!(mock.last().json()["echo"], false);

    let reply = client
        .post(
            &gw.url("/v1/embeddings"),
            &[],
            r#"{"model":"chat-default","input":["a","b"],"encoding_format":"float"}"#,
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["object"], "list");
    assert_eq!(reply.json()["data"][0]["object"], "embedding");
    assert_eq!(reply.json()["model"], "chat-default");
    assert_eq!(mock.last().path, "/v1/embeddings");
    assert_eq!(mock.last().json()["input"], json!(["a", "b"]));
}

#[tokio::test]
async fn streaming_round_trip_has_the_chunk_shapes() {
    let mock = Mock::openai().await;
    let gw = Gateway::start(&config(&mock, ""));
    let body = json!({"model": "chat-default", "stream": true, "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "hi"}]});
    let reply = Client::new()
        .post(&gw.url("/v1/chat/completions"), &[], body.to_string())
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("text/event-stream"));
    assert_eq!(reply.header("cache-control"), Some("no-cache"));
    assert_eq!(reply.header("x-accel-buffering"), Some("no"));
    assert_eq!(reply.header("x-switchyard-provider"), Some("vllm"));
    let events = reply.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks.len(), 5);
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "chat-default");
        assert_eq!(c["id"], "chatcmpl-mock");
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(support::client::streamed_content(&chunks), "Hello world");
    assert_eq!(chunks[3]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[4]["choices"], json!([]));
    assert_eq!(chunks[4]["usage"]["total_tokens"], 7);
    assert_eq!(mock.last().json()["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn chunks_reach_the_client_before_the_backend_finishes() {
    let release = Arc::new(Notify::new());
    let gate = release.clone();
    let mock = Mock::start(move |_| {
        Plan::sse(vec![
            event(&chunk(
                "m",
                json!({"role": "assistant", "content": "first"}),
                None,
            )),
            Step::Wait(gate.clone()),
            event(&chunk("m", json!({"content": "second"}), None)),
            event(&chunk("m", json!({}), Some("stop"))),
            done(),
        ])
    })
    .await;
    let gw = Gateway::start(&config(&mock, ""));
    let mut stream = Client::new()
        .open(
            &gw.url("/v1/chat/completions"),
            &[],
            chat("chat-default", true),
        )
        .await;
    assert_eq!(stream.status, 200);
    // The backend still holds chunk 2: chunk 1 must arrive on its own.
    let first = stream.read_until("first").await;
    assert!(!first.contains("second"));
    release.notify_one();
    let rest = stream.rest().await;
    assert!(rest.contains("second"));
    assert!(rest.ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn the_backend_is_cancelled_when_the_client_leaves_mid_stream() {
    let mock = Mock::start(|_| {
        Plan::sse(vec![
            event(&chunk(
                "m",
                json!({"role": "assistant", "content": "tick"}),
                None,
            )),
            Step::Hang,
        ])
    })
    .await;
    let gw = Gateway::start(&config(&mock, ""));
    let mut cut = mock.cut_watch();
    let mut stream = Client::new()
        .open(
            &gw.url("/v1/chat/completions"),
            &[],
            chat("chat-default", true),
        )
        .await;
    stream.read_until("tick").await;
    drop(stream);
    tokio::time::timeout(Duration::from_secs(1), cut.wait_for(|n| *n >= 1))
        .await
        .expect("the backend's connection closes within a second of the client leaving")
        .unwrap();
}

#[tokio::test]
async fn the_backend_is_cancelled_when_the_client_leaves_before_the_head() {
    let mock =
        Mock::start(|_| Plan::sse(vec![Step::Sleep(Duration::from_millis(50)), Step::Hang])).await;
    let gw = Gateway::start(&config(&mock, ""));
    let mut cut = mock.cut_watch();
    let client = Client::new();
    let url = gw.url("/v1/chat/completions");
    let request =
        tokio::spawn(async move { client.open(&url, &[], chat("chat-default", true)).await });
    // Wait until the backend has the request, then hang up.
    for _ in 0..500 {
        if mock.hits() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(mock.hits(), 1);
    request.abort();
    tokio::time::timeout(Duration::from_secs(1), cut.wait_for(|n| *n >= 1))
        .await
        .expect("the backend's connection closes within a second of the client leaving")
        .unwrap();
}

#[tokio::test]
async fn a_stream_that_breaks_off_ends_with_an_error_event() {
    let mock = Mock::start(|_| {
        Plan::sse(vec![event(&chunk(
            "m",
            json!({"role": "assistant", "content": "partial"}),
            None,
        ))])
    })
    .await;
    let gw = Gateway::start(&config(&mock, ""));
    let reply = Client::new()
        .post(
            &gw.url("/v1/chat/completions"),
            &[],
            chat("chat-default", true),
        )
        .await;
    assert_eq!(reply.status, 200);
    let events = reply.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let error: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(error["error"]["type"], "upstream_error");
    assert!(error["error"]["message"].as_str().unwrap().contains("vllm"));
    gw.wait_for_metric(
        "switchyard_requests_total{endpoint=\"chat\",key=\"anonymous\",model=\"chat-default\",provider=\"vllm\",status=\"stream_error\"}",
        1.0,
    )
    .await;
}

#[tokio::test]
async fn mid_stream_errors_from_the_backend_are_relayed() {
    let mock = Mock::start(|_| {
        Plan::sse(vec![
            event(&chunk("m", json!({"role": "assistant", "content": "a"}), None)),
            event(&json!({"error": {"message": "CUDA out of memory", "type": "InternalServerError", "code": 500}})),
            done(),
        ])
    })
    .await;
    let gw = Gateway::start(&config(&mock, ""));
    let reply = Client::new()
        .post(
            &gw.url("/v1/chat/completions"),
            &[],
            chat("chat-default", true),
        )
        .await;
    let events = reply.events();
    let error: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("CUDA out of memory")
    );
    assert_eq!(events.last().unwrap(), "[DONE]");
    let _ = mock::openai; // the default handler is used by other tests
}

#[tokio::test]
async fn model_names_that_need_escaping_survive_both_ways() {
    // An alias and a backend model whose JSON strings need escapes: both
    // are made when the config is compiled and spliced into bodies.
    let mock = Mock::openai().await;
    let gw = Gateway::start(&format!(
        "auth: {{required: false}}\n\
         providers:\n  vllm:\n    type: openai\n    base_url: {}\n\
         models:\n  'team \"a\" \\ chat':\n    targets: [{{provider: vllm, model: \"org/m\\\"odel\\\\é\"}}]\n",
        mock.url("/v1")
    ));
    for stream in [false, true] {
        let reply = Client::new()
            .post(
                &gw.url("/v1/chat/completions"),
                &[],
                chat("team \"a\" \\ chat", stream),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(mock.last().json()["model"], "org/m\"odel\\é");
        let text = reply.text();
        let answer: Value = if stream {
            let first = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
            serde_json::from_str(first).unwrap()
        } else {
            reply.json()
        };
        assert_eq!(answer["model"], "team \"a\" \\ chat", "{text}");
    }
}
