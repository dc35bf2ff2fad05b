//! `type: anthropic` end to end: the gateway in front of a mock that speaks
//! the Messages API, whole and streamed, with tools, legacy completions,
//! refusals and every error path.

mod support;

use bytes::Bytes;
use serde_json::{Value, json};
use support::mock::{Plan, Recorded, Step};
use support::{Client, Gateway, Mock};

const KEY: &str = "sk-ant-test-KEY-1";

fn config(mock: &Mock) -> String {
    format!(
        "auth: {{required: false}}\n\
         providers:\n\
         \x20 claude:\n    type: anthropic\n    base_url: {base}\n    api_key: {KEY}\n\
         \x20 tuned:\n    type: anthropic\n    base_url: {base}/\n    api_key: {KEY}\n    version: \"2024-10-22\"\n    default_max_tokens: 256\n\
         models:\n\
         \x20 sonnet: {{targets: [{{provider: claude, model: claude-sonnet-4-20250514}}]}}\n\
         \x20 tuned: {{targets: [{{provider: tuned, model: claude-haiku}}]}}\n",
        base = mock.url("")
    )
}

/// One named Messages event.
fn ev(data: Value) -> Step {
    let name = data["type"].as_str().unwrap().to_owned();
    Step::Send(Bytes::from(format!("event: {name}\ndata: {data}\n\n")))
}

fn message_start(input_tokens: u64) -> Step {
    ev(
        json!({"type": "message_start", "message": {"id": "msg_01X", "type": "message", "role": "assistant",
        "model": "claude-sonnet-4-20250514", "content": [], "stop_reason": null, "stop_sequence": null,
        "usage": {"input_tokens": input_tokens, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 2, "output_tokens": 1}}}),
    )
}

fn text_block(index: u64, text: &str) -> Vec<Step> {
    vec![
        ev(
            json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}),
        ),
        ev(
            json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}),
        ),
        ev(json!({"type": "content_block_stop", "index": index})),
    ]
}

fn message_end(stop_reason: &str, output_tokens: u64) -> Vec<Step> {
    vec![
        ev(
            json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null}, "usage": {"output_tokens": output_tokens}}),
        ),
        ev(json!({"type": "message_stop"})),
    ]
}

/// The mock's default: "Hello world", whole or streamed.
fn anthropic(req: &Recorded) -> Plan {
    if req.json()["stream"] == json!(true) {
        let mut steps = vec![message_start(10)];
        steps.push(ev(json!({"type": "ping"})));
        steps.extend(text_block(0, "Hello"));
        steps.push(ev(
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " world"}}),
        ));
        steps.extend(message_end("end_turn", 3));
        return Plan::sse(steps);
    }
    Plan::json(
        200,
        json!({"id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-20250514",
               "content": [{"type": "text", "text": "Hello world"}],
               "stop_reason": "end_turn", "stop_sequence": null,
               "usage": {"input_tokens": 10, "output_tokens": 3, "cache_creation_input_tokens": 4, "cache_read_input_tokens": 2}}),
    )
}

/// The chunks of an SSE reply, `[DONE]` checked and left out.
#[tokio::test]
async fn a_chat_round_trip_translates_both_ways() {
    let mock = Mock::start(anthropic).await;
    let gw = Gateway::start(&config(&mock));
    let body = json!({
        "model": "sonnet",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": "Answer in English."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
            ]}
        ],
        "max_tokens": 50,
        "temperature": 1.8,
        "top_p": 0.5,
        "stop": "\n\n",
        "user": "u-7",
        "presence_penalty": 0.5
    });
    let reply = Client::new()
        .post(&gw.url("/v1/chat/completions"), &[], body.to_string())
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.header("x-switchyard-provider"), Some("claude"));
    assert_eq!(
        reply.header("x-switchyard-model"),
        Some("claude-sonnet-4-20250514")
    );
    let v = reply.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "sonnet");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(
        v["choices"],
        json!([{"index": 0, "message": {"role": "assistant", "content": "Hello world", "refusal": null},
                "logprobs": null, "finish_reason": "stop"}])
    );
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 16, "completion_tokens": 3, "total_tokens": 19})
    );

    let sent = mock.last();
    assert_eq!(sent.method, "POST");
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.header("x-api-key"), Some(KEY));
    assert_eq!(sent.header("authorization"), None);
    assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(sent.header("content-type"), Some("application/json"));
    assert!(sent.header("x-request-id").is_some());
    assert_eq!(
        sent.json(),
        json!({
            "model": "claude-sonnet-4-20250514",
            "max_tokens": 50,
            "system": "Be brief.\n\nAnswer in English.",
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}
            ]}],
            "temperature": 1.0,
            "top_p": 0.5,
            "stop_sequences": ["\n\n"],
            "metadata": {"user_id": "u-7"}
        })
    );
}

#[tokio::test]
async fn provider_options_set_the_version_and_the_default_max_tokens() {
    let mock = Mock::start(anthropic).await;
    let gw = Gateway::start(&config(&mock));
    let client = Client::new();
    let url = gw.url("/v1/chat/completions");
    let ask = |extra: Value| {
        let mut body = json!({"model": "tuned", "messages": [{"role": "user", "content": "Hi"}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        client.post(&url, &[], body.to_string())
    };
    assert_eq!(ask(json!({})).await.status, 200);
    let sent = mock.last();
    assert_eq!(sent.path, "/v1/messages", "a trailing slash is ignored");
    assert_eq!(sent.header("anthropic-version"), Some("2024-10-22"));
    assert_eq!(
        sent.json(),
        json!({"model": "claude-haiku", "max_tokens": 256,
               "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]})
    );
    assert_eq!(ask(json!({"max_tokens": 20})).await.status, 200);
    assert_eq!(mock.last().json()["max_tokens"], 20);
    assert_eq!(
        ask(json!({"max_tokens": 20, "max_completion_tokens": 30}))
            .await
            .status,
        200
    );
    assert_eq!(mock.last().json()["max_tokens"], 30);
}

#[tokio::test]
async fn tool_calls_go_out_and_come_back() {
    let mock = Mock::start(|_| {
        Plan::json(
            200,
            json!({"id": "msg_02", "type": "message", "role": "assistant", "model": "claude-sonnet-4-20250514",
                   "content": [
                       {"type": "text", "text": "I'll check both."},
                       {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"location": "Paris", "unit": "C"}},
                       {"type": "tool_use", "id": "toolu_01B", "name": "get_time", "input": {}}
                   ],
                   "stop_reason": "tool_use", "stop_sequence": null,
                   "usage": {"input_tokens": 377, "output_tokens": 65}}),
        )
    })
    .await;
    let gw = Gateway::start(&config(&mock));
    let body = json!({
        "model": "sonnet",
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "toolu_00", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}},
                {"id": "toolu_01", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
            ]},
            {"role": "tool", "tool_call_id": "toolu_00", "content": "18°C, cloudy"},
            {"role": "tool", "tool_call_id": "toolu_01", "content": "14:00"},
            {"role": "user", "content": "And again, please."}
        ],
        "tools": [
            {"type": "function", "function": {"name": "get_weather", "description": "Current weather",
             "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}},
            {"type": "function", "function": {"name": "get_time"}}
        ],
        "tool_choice": "required",
        "parallel_tool_calls": false
    });
    let reply = Client::new()
        .post(&gw.url("/v1/chat/completions"), &[], body.to_string())
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let v = reply.json();
    assert_eq!(
        v["choices"][0],
        json!({"index": 0, "message": {"role": "assistant", "content": "I'll check both.", "refusal": null,
               "tool_calls": [
                   {"id": "toolu_01A", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\",\"unit\":\"C\"}"}},
                   {"id": "toolu_01B", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
               ]},
               "logprobs": null, "finish_reason": "tool_calls"})
    );
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 377, "completion_tokens": 65, "total_tokens": 442})
    );

    assert_eq!(
        mock.last().json(),
        json!({
            "model": "claude-sonnet-4-20250514",
            "max_tokens": 4096,
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "toolu_00", "name": "get_weather", "input": {"location": "Paris"}},
                    {"type": "tool_use", "id": "toolu_01", "name": "get_time", "input": {}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_00", "content": "18°C, cloudy"},
                    {"type": "tool_result", "tool_use_id": "toolu_01", "content": "14:00"},
                    {"type": "text", "text": "And again, please."}
                ]}
            ],
            "tools": [
                {"name": "get_weather", "description": "Current weather",
                 "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}},
                {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}
            ],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true}
        })
    );
}

#[tokio::test]
async fn a_stream_with_text_and_tool_calls_becomes_openai_chunks() {
    let mock = Mock::start(|_| {
        let mut steps = vec![message_start(377)];
        steps.extend(text_block(0, "Let me check."));
        steps.push(ev(json!({"type": "ping"})));
        steps.push(ev(
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {}}}),
        ));
        for fragment in ["", "{\"locat", "ion\": \"Paris\"}"] {
            steps.push(ev(
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": fragment}}),
            ));
        }
        steps.push(ev(json!({"type": "content_block_stop", "index": 1})));
        steps.push(ev(
            json!({"type": "a_new_event_type", "index": 1, "anything": [1, 2]}),
        ));
        steps.push(ev(
            json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "toolu_01B", "name": "get_time", "input": {}}}),
        ));
        steps.push(ev(
            json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{\"tz\": \"CET\"}"}}),
        ));
        steps.push(ev(json!({"type": "content_block_stop", "index": 2})));
        steps.extend(message_end("tool_use", 65));
        Plan::sse(steps)
    })
    .await;
    let gw = Gateway::start(&config(&mock));
    let body = json!({"model": "sonnet", "stream": true, "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "Weather and time in Paris?"}],
                      "tools": [{"type": "function", "function": {"name": "get_weather"}},
                                {"type": "function", "function": {"name": "get_time"}}]});
    let reply = Client::new()
        .post(&gw.url("/v1/chat/completions"), &[], body.to_string())
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("text/event-stream"));
    assert_eq!(mock.last().json()["stream"], true);
    assert_eq!(mock.last().header("accept"), Some("text/event-stream"));

    let chunks = reply.chunks();
    let id = chunks[0]["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("chatcmpl-"));
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "sonnet");
        assert_eq!(c["id"], id.as_str());
        assert_eq!(c["created"], chunks[0]["created"]);
    }
    let deltas: Vec<(Value, Value)> = chunks
        .iter()
        .filter(|c| !c["choices"].as_array().unwrap().is_empty())
        .map(|c| {
            (
                c["choices"][0]["delta"].clone(),
                c["choices"][0]["finish_reason"].clone(),
            )
        })
        .collect();
    let open = Value::Null;
    assert_eq!(
        deltas,
        vec![
            (json!({"role": "assistant", "content": ""}), open.clone()),
            (json!({"content": "Let me check."}), open.clone()),
            (
                json!({"tool_calls": [{"index": 0, "id": "toolu_01A", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
                open.clone()
            ),
            (
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"locat"}}]}),
                open.clone()
            ),
            (
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "ion\": \"Paris\"}"}}]}),
                open.clone()
            ),
            (
                json!({"tool_calls": [{"index": 1, "id": "toolu_01B", "type": "function", "function": {"name": "get_time", "arguments": ""}}]}),
                open.clone()
            ),
            (
                json!({"tool_calls": [{"index": 1, "function": {"arguments": "{\"tz\": \"CET\"}"}}]}),
                open.clone()
            ),
            (json!({}), json!("tool_calls")),
        ]
    );
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(
        last["usage"],
        json!({"prompt_tokens": 379, "completion_tokens": 65, "total_tokens": 444})
    );
}

#[tokio::test]
async fn a_plain_stream_has_no_usage_chunk_unless_asked() {
    let mock = Mock::start(anthropic).await;
    let gw = Gateway::start(&config(&mock));
    let body =
        json!({"model": "sonnet", "stream": true, "messages": [{"role": "user", "content": "Hi"}]});
    let reply = Client::new()
        .post(&gw.url("/v1/chat/completions"), &[], body.to_string())
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let chunks = reply.chunks();
    assert_eq!(chunks.len(), 4, "{chunks:?}");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(support::client::streamed_content(&chunks), "Hello world");
    assert_eq!(chunks[3]["choices"][0]["finish_reason"], "stop");
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
}

#[tokio::test]
async fn legacy_completions_go_through_messages() {
    let mock = Mock::start(anthropic).await;
    let gw = Gateway::start(&config(&mock));
    let client = Client::new();
    let reply = client
        .post(
            &gw.url("/v1/completions"),
            &[],
            r#"{"model":"sonnet","prompt":"Say hello","max_tokens":7}"#,
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let v = reply.json();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["model"], "sonnet");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(v["choices"][0]["text"], "Hello world");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["total_tokens"], 19);
    let sent = mock.last();
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(
        sent.json(),
        json!({"model": "claude-sonnet-4-20250514", "max_tokens": 7,
               "messages": [{"role": "user", "content": [{"type": "text", "text": "Say hello"}]}]})
    );

    let reply = client
        .post(
            &gw.url("/v1/completions"),
            &[],
            r#"{"model":"sonnet","prompt":"Say hello","stream":true}"#,
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let chunks = reply.chunks();
    assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, "Hello world");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
}

#[tokio::test]
async fn what_the_api_cannot_do_is_refused_before_any_request() {
    let mock = Mock::start(anthropic).await;
    let gw = Gateway::start(&config(&mock));
    let client = Client::new();
    let reply = client
        .post(
            &gw.url("/v1/embeddings"),
            &[],
            r#"{"model":"sonnet","input":"hello"}"#,
        )
        .await;
    reply.assert_error(400, "invalid_request_error", None);
    assert_eq!(reply.json()["error"]["param"], "model");

    for (extra, param) in [
        (json!({"n": 3}), "n"),
        (json!({"logprobs": true, "top_logprobs": 2}), "logprobs"),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "object"}}}}),
            "response_format",
        ),
    ] {
        let mut body = json!({"model": "sonnet", "messages": [{"role": "user", "content": "Hi"}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let reply = client
            .post(&gw.url("/v1/chat/completions"), &[], body.to_string())
            .await;
        reply.assert_error(400, "invalid_request_error", None);
        let error = &reply.json()["error"];
        assert_eq!(error["param"], param);
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("provider claude"),
            "{error}"
        );
    }
    let reply = client
        .post(
            &gw.url("/v1/completions"),
            &[],
            r#"{"model":"sonnet","prompt":"Hi","logprobs":2}"#,
        )
        .await;
    reply.assert_error(400, "invalid_request_error", None);
    assert_eq!(mock.hits(), 0);
}

#[tokio::test]
async fn backend_errors_map_per_the_contract() {
    let mock = Mock::start(anthropic).await;
    let gw = Gateway::start(&config(&mock));
    let client = Client::new();
    let url = gw.url("/v1/chat/completions");
    let hi =
        json!({"model": "sonnet", "messages": [{"role": "user", "content": "Hi"}]}).to_string();
    let error = |kind: &str, message: &str| json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_011"});

    let body = error(
        "invalid_request_error",
        "max_tokens: 999999 > 64000, which is the maximum allowed",
    );
    mock.set(move |_| Plan::json(400, body.clone()));
    let reply = client.post(&url, &[], hi.clone()).await;
    reply.assert_error(400, "invalid_request_error", Some("invalid_request_error"));
    assert_eq!(
        reply.json()["error"]["message"],
        "max_tokens: 999999 > 64000, which is the maximum allowed"
    );

    let body = error("not_found_error", "model: claude-nope");
    mock.set(move |_| Plan::json(404, body.clone()));
    let reply = client.post(&url, &[], hi.clone()).await;
    reply.assert_error(404, "invalid_request_error", Some("not_found_error"));

    let body = error(
        "rate_limit_error",
        "Number of requests has exceeded your rate limit",
    );
    mock.set(move |_| Plan::json(429, body.clone()).header("retry-after", "12"));
    let reply = client.post(&url, &[], hi.clone()).await;
    reply.assert_error(429, "rate_limit_error", Some("upstream_rate_limited"));
    assert_eq!(reply.header("retry-after"), Some("12"));

    let body = error("overloaded_error", "Overloaded");
    mock.set(move |_| Plan::json(529, body.clone()).header("retry-after", "3"));
    let reply = client.post(&url, &[], hi.clone()).await;
    reply.assert_error(429, "rate_limit_error", Some("upstream_rate_limited"));
    assert_eq!(reply.header("retry-after"), Some("3"));
    assert!(reply.text().contains("529"), "{}", reply.text());

    let body = error("api_error", "Internal server error");
    mock.set(move |_| Plan::json(500, body.clone()));
    let reply = client.post(&url, &[], hi.clone()).await;
    reply.assert_error(502, "upstream_error", Some("upstream_error"));
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("provider claude") && message.contains("Internal server error"),
        "{message}"
    );

    let body = error("authentication_error", &format!("invalid x-api-key {KEY}"));
    mock.set(move |_| Plan::json(401, body.clone()));
    let reply = client.post(&url, &[], hi.clone()).await;
    reply.assert_error(502, "upstream_error", Some("upstream_error"));
    assert_eq!(
        reply.json()["error"]["message"],
        "provider claude rejected the gateway's credentials"
    );
    assert!(!reply.text().contains(KEY));
}

#[tokio::test]
async fn an_error_event_mid_stream_ends_the_stream_with_an_error() {
    let mock = Mock::start(|_| {
        let mut steps = vec![message_start(5)];
        steps.extend(text_block(0, "Partial"));
        steps.push(ev(
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        ));
        Plan::sse(steps)
    })
    .await;
    let gw = Gateway::start(&config(&mock));
    let body =
        json!({"model": "sonnet", "stream": true, "messages": [{"role": "user", "content": "Hi"}]});
    let reply = Client::new()
        .post(&gw.url("/v1/chat/completions"), &[], body.to_string())
        .await;
    assert_eq!(reply.status, 200);
    let events = reply.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(events.iter().any(|e| e.contains("Partial")));
    let error: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(error["error"]["type"], "upstream_error");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("provider claude") && message.contains("Overloaded"),
        "{message}"
    );
    assert!(
        !events.iter().any(|e| e.contains("finish_reason\":\"stop")),
        "a failed stream does not look finished"
    );
}

#[tokio::test]
async fn a_stream_cut_before_message_stop_is_a_failure() {
    let mock = Mock::start(|_| {
        let mut steps = vec![message_start(5)];
        steps.extend(text_block(0, "Half an ans"));
        Plan::sse(steps)
    })
    .await;
    let gw = Gateway::start(&config(&mock));
    let body =
        json!({"model": "sonnet", "stream": true, "messages": [{"role": "user", "content": "Hi"}]});
    let reply = Client::new()
        .post(&gw.url("/v1/chat/completions"), &[], body.to_string())
        .await;
    assert_eq!(reply.status, 200);
    let events = reply.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let error: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("message_stop"),
        "{error}"
    );
}

#[tokio::test]
async fn an_error_event_before_any_output_is_a_plain_error_response() {
    let mock = Mock::start(|_| {
        Plan::sse(vec![ev(
            json!({"type": "error", "error": {"type": "api_error", "message": "Internal server error"}}),
        )])
    })
    .await;
    let gw = Gateway::start(&config(&mock));
    let body =
        json!({"model": "sonnet", "stream": true, "messages": [{"role": "user", "content": "Hi"}]});
    let reply = Client::new()
        .post(&gw.url("/v1/chat/completions"), &[], body.to_string())
        .await;
    reply.assert_error(502, "upstream_error", Some("upstream_error"));
    assert!(reply.text().contains("Internal server error"));
}
