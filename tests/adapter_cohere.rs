//! `type: cohere`: Chat v2 (whole and SSE), Chat v1 (whole and NDJSON),
//! Embed v2, tool calls both ways, legacy completions, errors and refusals,
//! against a mock that speaks Cohere's wire format.

mod support;

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use serde_json::{Value, json};
use support::mock::{Plan, Step};
use support::{Client, Gateway, Mock, Recorded};
use tokio::sync::Notify;

const KEY: &str = "co-test-key-123";

fn config(mock: &Mock) -> String {
    let base = mock.url("");
    format!(
        "auth: {{required: false}}\n\
         providers:\n\
         \x20 co:\n    type: cohere\n    base_url: {base}/\n    api_key: {KEY}\n\
         \x20 co1:\n    type: cohere\n    base_url: {base}\n    api_key: {KEY}\n    api: v1\n\
         \x20 query:\n    type: cohere\n    base_url: {base}\n    api_key: {KEY}\n    input_type: search_query\n\
         models:\n\
         \x20 chat: {{targets: [{{provider: co, model: command-a-03-2025}}]}}\n\
         \x20 chat-v1: {{targets: [{{provider: co1, model: command-r-plus}}]}}\n\
         \x20 embed: {{targets: [{{provider: co, model: embed-v4.0}}]}}\n\
         \x20 embed-query: {{targets: [{{provider: query, model: embed-v4.0}}]}}\n"
    )
}

/// One Chat v2 SSE event: `event:` plus `data:` whose `type` is the same name.
fn ev(kind: &str, mut data: Value) -> Step {
    data["type"] = json!(kind);
    Step::Send(Bytes::from(format!("event: {kind}\ndata: {data}\n\n")))
}

fn done() -> Step {
    Step::Send(Bytes::from_static(b"data: [DONE]\n\n"))
}

/// One Chat v1 NDJSON line.
fn line(data: Value) -> Step {
    Step::Send(Bytes::from(format!("{data}\n")))
}

fn ndjson(steps: Vec<Step>) -> Plan {
    Plan {
        status: 200,
        headers: vec![("content-type".into(), "application/stream+json".into())],
        steps,
    }
}

fn usage(input: u64, output: u64) -> Value {
    json!({"billed_units": {"input_tokens": 3, "output_tokens": 1},
           "tokens": {"input_tokens": input, "output_tokens": output}})
}

fn v2_text_stream(text: &[&str]) -> Vec<Step> {
    let mut steps = vec![
        ev(
            "message-start",
            json!({"id": "8c1d7b3e", "delta": {"message": {"role": "assistant", "content": [], "tool_plan": "", "tool_calls": []}}}),
        ),
        ev(
            "content-start",
            json!({"index": 0, "delta": {"message": {"content": {"type": "text", "text": ""}}}}),
        ),
    ];
    for t in text {
        steps.push(ev(
            "content-delta",
            json!({"index": 0, "delta": {"message": {"content": {"text": t}}}}),
        ));
    }
    steps.push(ev("content-end", json!({"index": 0})));
    steps.push(ev(
        "message-end",
        json!({"delta": {"finish_reason": "COMPLETE", "usage": usage(70, 3)}}),
    ));
    steps.push(done());
    steps
}

/// Cohere as the reference describes it: text answers, whole or streamed,
/// and embeddings.
fn cohere(req: &Recorded) -> Plan {
    let body = req.json();
    match req.path.as_str() {
        "/v2/embed" => {
            let n = body["texts"].as_array().map_or(0, Vec::len);
            let vectors: Vec<Value> = (0..n)
                .map(|i| json!([0.5 + i as f64, -0.25, 0.125]))
                .collect();
            Plan::json(
                200,
                json!({"id": "da6e", "texts": body["texts"], "embeddings": {"float": vectors},
                       "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": 2}, "tokens": {"input_tokens": 6}},
                       "response_type": "embeddings_by_type"}),
            )
        }
        "/v2/chat" if body["stream"] == json!(true) => Plan::sse(v2_text_stream(&["Hel", "lo!"])),
        "/v2/chat" => Plan::json(
            200,
            json!({"id": "5d1e0c7a", "finish_reason": "COMPLETE",
                   "message": {"role": "assistant", "content": [{"type": "text", "text": "Hello!"}]},
                   "usage": usage(70, 3)}),
        ),
        "/v1/chat" if body["stream"] == json!(true) => ndjson(vec![
            line(
                json!({"is_finished": false, "event_type": "stream-start", "generation_id": "8a3c"}),
            ),
            line(json!({"is_finished": false, "event_type": "text-generation", "text": "Hel"})),
            line(json!({"is_finished": false, "event_type": "text-generation", "text": "lo!"})),
            line(
                json!({"is_finished": true, "event_type": "stream-end", "finish_reason": "COMPLETE",
                        "response": {"response_id": "0f9d", "text": "Hello!", "generation_id": "8a3c", "finish_reason": "COMPLETE",
                                     "meta": {"billed_units": {"input_tokens": 3, "output_tokens": 2}, "tokens": {"input_tokens": 69, "output_tokens": 2}}}}),
            ),
        ]),
        "/v1/chat" => Plan::json(
            200,
            json!({"response_id": "0f9d", "generation_id": "8a3c", "text": "Hello!", "finish_reason": "COMPLETE",
                   "chat_history": [], "meta": {"api_version": {"version": "1"},
                   "billed_units": {"input_tokens": 3, "output_tokens": 9}, "tokens": {"input_tokens": 69, "output_tokens": 9}}}),
        ),
        _ => Plan::json(404, json!({"id": "x", "message": "no such path"})),
    }
}

/// The JSON chunks of an SSE body, checking it ends with `[DONE]`.
#[tokio::test]
async fn a_v2_chat_is_translated_both_ways() {
    let mock = Mock::start(cohere).await;
    let gw = Gateway::start(&config(&mock));
    let body = json!({
        "model": "chat",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}],
        "temperature": 0.5, "top_p": 0.9, "max_tokens": 100, "stop": "END", "seed": 3,
        "frequency_penalty": 0.1, "presence_penalty": 0.2, "user": "u-1"
    });
    let reply = Client::new()
        .post(&gw.url("/v1/chat/completions"), &[], body.to_string())
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    let sent = mock.last();
    assert_eq!(sent.method, "POST");
    assert_eq!(
        sent.path, "/v2/chat",
        "a trailing slash on base_url is ignored"
    );
    assert_eq!(
        sent.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(sent.header("content-type"), Some("application/json"));
    assert_eq!(sent.header("accept"), Some("application/json"));
    assert!(sent.header("x-request-id").is_some());
    assert_eq!(
        sent.json(),
        json!({
            "model": "command-a-03-2025",
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}],
            "stream": false,
            "max_tokens": 100, "stop_sequences": ["END"], "temperature": 0.5, "p": 0.9, "seed": 3,
            "frequency_penalty": 0.1, "presence_penalty": 0.2
        })
    );

    let v = reply.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "chat");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(
        v["choices"][0]["message"],
        json!({"role": "assistant", "content": "Hello!", "refusal": null})
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 70, "completion_tokens": 3, "total_tokens": 73}),
        "usage is usage.tokens, not billed_units"
    );
    assert_eq!(reply.header("x-switchyard-provider"), Some("co"));
    assert_eq!(
        reply.header("x-switchyard-model"),
        Some("command-a-03-2025")
    );
}

#[tokio::test]
async fn a_v2_stream_becomes_openai_chunks() {
    let mock = Mock::start(cohere).await;
    let gw = Gateway::start(&config(&mock));
    let body = json!({"model": "chat", "stream": true, "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "hi"}]});
    let reply = Client::new()
        .post(&gw.url("/v1/chat/completions"), &[], body.to_string())
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("text/event-stream"));

    let sent = mock.last();
    assert_eq!(sent.header("accept"), Some("text/event-stream"));
    assert_eq!(
        sent.json(),
        json!({"model": "command-a-03-2025", "messages": [{"role": "user", "content": "hi"}], "stream": true})
    );

    let c = reply.chunks();
    assert_eq!(c.len(), 5, "{}", reply.text());
    for chunk in &c {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], "chat");
        assert_eq!(chunk["id"], c[0]["id"]);
    }
    assert_eq!(
        c[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert_eq!(c[1]["choices"][0]["delta"], json!({"content": "Hel"}));
    assert_eq!(c[2]["choices"][0]["delta"], json!({"content": "lo!"}));
    assert_eq!(c[3]["choices"][0]["delta"], json!({}));
    assert_eq!(c[3]["choices"][0]["finish_reason"], "stop");
    assert_eq!(c[4]["choices"], json!([]));
    assert_eq!(
        c[4]["usage"],
        json!({"prompt_tokens": 70, "completion_tokens": 3, "total_tokens": 73})
    );
}

#[tokio::test]
async fn tool_calls_go_out_and_come_back() {
    let mock = Mock::start(|req: &Recorded| {
        if req.json()["stream"] != json!(true) {
            return Plan::json(
                200,
                json!({"id": "t0", "finish_reason": "TOOL_CALL",
                       "message": {"role": "assistant", "tool_plan": "I will look up the weather.",
                                   "tool_calls": [{"id": "get_weather_x1", "type": "function",
                                                   "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
                       "usage": usage(912, 40)}),
            );
        }
        // Cohere's indexes count content blocks too here: the gateway keeps its own.
        Plan::sse(vec![
            ev("message-start", json!({"id": "t1", "delta": {"message": {"role": "assistant"}}})),
            ev("tool-plan-delta", json!({"delta": {"message": {"tool_plan": "I will check."}}})),
            ev("tool-call-start", json!({"index": 1, "delta": {"message": {"tool_calls":
                {"id": "get_weather_a1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}}}})),
            ev("tool-call-delta", json!({"index": 1, "delta": {"message": {"tool_calls": {"function": {"arguments": "{\"city\": \"Os"}}}}})),
            ev("tool-call-delta", json!({"index": 1, "delta": {"message": {"tool_calls": {"function": {"arguments": "lo\"}"}}}}})),
            ev("tool-call-end", json!({"index": 1})),
            ev("tool-call-start", json!({"index": 2, "delta": {"message": {"tool_calls":
                {"id": "get_time_c3", "type": "function", "function": {"name": "get_time", "arguments": ""}}}}})),
            ev("tool-call-delta", json!({"index": 2, "delta": {"message": {"tool_calls": {"function": {"arguments": "{\"tz\": \"CET\"}"}}}}})),
            ev("tool-call-end", json!({"index": 2})),
            ev("message-end", json!({"delta": {"finish_reason": "TOOL_CALL", "usage": usage(1589, 135)}})),
        ])
    })
    .await;
    let gw = Gateway::start(&config(&mock));
    let client = Client::new();
    let tools = json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}}}
    ]);

    // A conversation that carries an earlier call and its result.
    let body = json!({
        "model": "chat", "stream": true, "tools": tools, "tool_choice": "required",
        "messages": [
            {"role": "user", "content": "Weather in Bergen, then Oslo with the time?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "get_weather_b0", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Bergen\"}"}}]},
            {"role": "tool", "tool_call_id": "get_weather_b0", "content": "{\"temp\": 9}"}
        ]
    });
    let reply = client
        .post(&gw.url("/v1/chat/completions"), &[], body.to_string())
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        mock.last().json(),
        json!({
            "model": "command-a-03-2025",
            "messages": [
                {"role": "user", "content": "Weather in Bergen, then Oslo with the time?"},
                {"role": "assistant", "tool_calls": [{"id": "get_weather_b0", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\":\"Bergen\"}"}}]},
                {"role": "tool", "tool_call_id": "get_weather_b0", "content": "{\"temp\": 9}"}
            ],
            "stream": true,
            "tools": tools,
            "tool_choice": "REQUIRED"
        })
    );
    let c = reply.chunks();
    let deltas: Vec<&Value> = c.iter().map(|c| &c["choices"][0]["delta"]).collect();
    assert_eq!(deltas[0]["role"], "assistant");
    assert_eq!(deltas[1], &json!({"content": "I will check."}));
    assert_eq!(
        deltas[2],
        &json!({"tool_calls": [{"index": 0, "id": "get_weather_a1", "type": "function",
                                 "function": {"name": "get_weather", "arguments": ""}}]})
    );
    assert_eq!(
        deltas[3],
        &json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": \"Os"}}]})
    );
    assert_eq!(
        deltas[4],
        &json!({"tool_calls": [{"index": 0, "function": {"arguments": "lo\"}"}}]})
    );
    assert_eq!(
        deltas[5],
        &json!({"tool_calls": [{"index": 1, "id": "get_time_c3", "type": "function",
                                 "function": {"name": "get_time", "arguments": ""}}]})
    );
    assert_eq!(
        deltas[6],
        &json!({"tool_calls": [{"index": 1, "function": {"arguments": "{\"tz\": \"CET\"}"}}]})
    );
    assert_eq!(c[7]["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(c.len(), 8, "no usage chunk unless asked");

    // A named tool_choice: only that tool, and a call is required.
    let body = json!({"model": "chat", "tools": tools,
                      "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                      "messages": [{"role": "user", "content": "Weather in Oslo?"}]});
    let reply = client
        .post(&gw.url("/v1/chat/completions"), &[], body.to_string())
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let sent = mock.last().json();
    assert_eq!(sent["tools"], json!([tools[0]]));
    assert_eq!(sent["tool_choice"], "REQUIRED");
    let v = reply.json();
    assert_eq!(
        v["choices"][0]["message"],
        json!({"role": "assistant", "content": "I will look up the weather.", "refusal": null,
               "tool_calls": [{"id": "get_weather_x1", "type": "function",
                               "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]})
    );
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(v["usage"]["prompt_tokens"], 912);
}

#[tokio::test]
async fn legacy_completions_are_a_one_message_chat() {
    let mock = Mock::start(cohere).await;
    let gw = Gateway::start(&config(&mock));
    let client = Client::new();
    let reply = client
        .post(
            &gw.url("/v1/completions"),
            &[],
            r#"{"model":"chat","prompt":"Once upon","max_tokens":5}"#,
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(mock.last().path, "/v2/chat");
    assert_eq!(
        mock.last().json(),
        json!({"model": "command-a-03-2025", "messages": [{"role": "user", "content": "Once upon"}],
               "stream": false, "max_tokens": 5})
    );
    let v = reply.json();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["model"], "chat");
    assert_eq!(v["choices"][0]["text"], "Hello!");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["total_tokens"], 73);

    let reply = client
        .post(
            &gw.url("/v1/completions"),
            &[],
            r#"{"model":"chat","prompt":"Once upon","stream":true}"#,
        )
        .await;
    let c = reply.chunks();
    assert!(c.iter().all(|c| c["object"] == "text_completion"));
    let text: String = c
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, "Hello!");
    assert_eq!(c.last().unwrap()["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn embeddings_go_to_embed_v2() {
    let mock = Mock::start(cohere).await;
    let gw = Gateway::start(&config(&mock));
    let client = Client::new();
    let reply = client
        .post(
            &gw.url("/v1/embeddings"),
            &[],
            r#"{"model":"embed","input":["hello","goodbye"],"dimensions":256}"#,
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let sent = mock.last();
    assert_eq!(sent.path, "/v2/embed");
    assert_eq!(
        sent.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(
        sent.json(),
        json!({"model": "embed-v4.0", "texts": ["hello", "goodbye"], "input_type": "search_document",
               "embedding_types": ["float"], "output_dimension": 256})
    );
    let v = reply.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "embed");
    assert_eq!(
        v["data"],
        json!([
            {"object": "embedding", "index": 0, "embedding": [0.5, -0.25, 0.125]},
            {"object": "embedding", "index": 1, "embedding": [1.5, -0.25, 0.125]}
        ])
    );
    assert_eq!(v["usage"], json!({"prompt_tokens": 6, "total_tokens": 6}));

    let reply = client
        .post(
            &gw.url("/v1/embeddings"),
            &[],
            r#"{"model":"embed-query","input":"hello","encoding_format":"base64"}"#,
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(mock.last().json()["input_type"], "search_query");
    assert_eq!(mock.last().json()["embedding_types"], json!(["float"]));
    let b64 = reply.json()["data"][0]["embedding"]
        .as_str()
        .unwrap()
        .to_owned();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let expected: Vec<u8> = [0.5f32, -0.25, 0.125]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    assert_eq!(bytes, expected);
}

#[tokio::test]
async fn chat_v1_speaks_message_history_and_ndjson() {
    let mock = Mock::start(cohere).await;
    let gw = Gateway::start(&config(&mock));
    let client = Client::new();
    let body = json!({"model": "chat-v1", "temperature": 0.3, "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "How are you?"}]});
    let reply = client
        .post(&gw.url("/v1/chat/completions"), &[], body.to_string())
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let sent = mock.last();
    assert_eq!(sent.path, "/v1/chat");
    assert_eq!(
        sent.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(
        sent.json(),
        json!({"model": "command-r-plus", "message": "How are you?",
               "chat_history": [{"role": "USER", "message": "Hi"}, {"role": "CHATBOT", "message": "Hello!"}],
               "preamble": "Be brief.", "stream": false, "temperature": 0.3})
    );
    let v = reply.json();
    assert_eq!(v["choices"][0]["message"]["content"], "Hello!");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 69, "completion_tokens": 9, "total_tokens": 78})
    );

    let mut body = body;
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let reply = client
        .post(&gw.url("/v1/chat/completions"), &[], body.to_string())
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        mock.last().header("accept"),
        None,
        "v1 streams in its default framing"
    );
    assert_eq!(mock.last().json()["stream"], true);
    let c = reply.chunks();
    assert_eq!(c.len(), 5, "{}", reply.text());
    assert_eq!(
        c[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert_eq!(c[1]["choices"][0]["delta"], json!({"content": "Hel"}));
    assert_eq!(c[2]["choices"][0]["delta"], json!({"content": "lo!"}));
    assert_eq!(c[3]["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        c[4]["usage"],
        json!({"prompt_tokens": 69, "completion_tokens": 2, "total_tokens": 71})
    );
}

#[tokio::test]
async fn chat_v1_tool_calls_get_ids_and_results_find_their_calls() {
    let mock = Mock::start(|req: &Recorded| {
        if req.json()["stream"] == json!(true) {
            return ndjson(vec![
                line(json!({"is_finished": false, "event_type": "stream-start", "generation_id": "g2"})),
                line(json!({"is_finished": false, "event_type": "tool-calls-chunk", "tool_call_delta": {"text": "Checking."}})),
                line(json!({"is_finished": false, "event_type": "tool-calls-chunk", "tool_call_delta": {"index": 0, "name": "get_weather"}})),
                line(json!({"is_finished": false, "event_type": "tool-calls-chunk", "tool_call_delta": {"index": 0, "parameters": "{\"city\":"}})),
                line(json!({"is_finished": false, "event_type": "tool-calls-chunk", "tool_call_delta": {"index": 0, "parameters": "\"Oslo\"}"}})),
                line(json!({"is_finished": false, "event_type": "tool-calls-generation", "text": "Checking.",
                            "tool_calls": [{"name": "get_weather", "parameters": {"city": "Oslo"}}]})),
                line(json!({"is_finished": true, "event_type": "stream-end", "finish_reason": "COMPLETE",
                            "response": {"text": "Checking.", "generation_id": "g2",
                                         "tool_calls": [{"name": "get_weather", "parameters": {"city": "Oslo"}}],
                                         "meta": {"tokens": {"input_tokens": 50, "output_tokens": 10}}}})),
            ]);
        }
        Plan::json(
            200,
            json!({"generation_id": "g1", "text": "I will check.", "finish_reason": "COMPLETE",
                   "tool_calls": [{"name": "get_weather", "parameters": {"city": "Oslo"}}],
                   "meta": {"tokens": {"input_tokens": 40, "output_tokens": 8}}}),
        )
    })
    .await;
    let gw = Gateway::start(&config(&mock));
    let client = Client::new();
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City"}}, "required": ["city"]}}}]);
    let body = json!({"model": "chat-v1", "tools": tools,
                      "messages": [{"role": "user", "content": "Weather in Oslo?"}]});
    let reply = client
        .post(&gw.url("/v1/chat/completions"), &[], body.to_string())
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        mock.last().json()["tools"],
        json!([{"name": "get_weather", "description": "Weather",
                "parameter_definitions": {"city": {"description": "City", "type": "str", "required": true}}}])
    );
    let message = &reply.json()["choices"][0]["message"];
    assert_eq!(message["content"], "I will check.");
    assert_eq!(
        message["tool_calls"],
        json!([{"id": "call_g1_0", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}])
    );
    assert_eq!(reply.json()["choices"][0]["finish_reason"], "tool_calls");

    // The client answers the call: v1 gets tool_results built from the call.
    let body = json!({"model": "chat-v1", "tools": tools, "stream": true, "messages": [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "I will check.", "tool_calls": message["tool_calls"]},
        {"role": "tool", "tool_call_id": "call_g1_0", "content": "{\"temp\": 12}"}]});
    let reply = client
        .post(&gw.url("/v1/chat/completions"), &[], body.to_string())
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let sent = mock.last().json();
    assert_eq!(sent["message"], "");
    assert_eq!(
        sent["chat_history"],
        json!([{"role": "USER", "message": "Weather in Oslo?"},
               {"role": "CHATBOT", "message": "I will check.", "tool_calls": [{"name": "get_weather", "parameters": {"city": "Oslo"}}]}])
    );
    assert_eq!(
        sent["tool_results"],
        json!([{"call": {"name": "get_weather", "parameters": {"city": "Oslo"}}, "outputs": [{"temp": 12}]}])
    );
    let c = reply.chunks();
    let deltas: Vec<&Value> = c.iter().map(|c| &c["choices"][0]["delta"]).collect();
    assert_eq!(deltas[1], &json!({"content": "Checking."}));
    assert_eq!(
        deltas[2],
        &json!({"tool_calls": [{"index": 0, "id": "call_g2_0", "type": "function",
                                 "function": {"name": "get_weather", "arguments": ""}}]})
    );
    let arguments: String = deltas[3..5]
        .iter()
        .map(|d| {
            d["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(arguments, "{\"city\":\"Oslo\"}");
    assert_eq!(c[5]["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(c.len(), 6, "{}", reply.text());
}

#[tokio::test]
async fn backend_errors_map_per_the_contract() {
    let mock = Mock::start(cohere).await;
    let gw = Gateway::start(&config(&mock));
    let client = Client::new();
    let url = gw.url("/v1/chat/completions");
    let chat =
        json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}).to_string();

    mock.set(|_| {
        Plan::json(
            400,
            json!({"id": "b3f1", "message": "invalid request: model 'nope' not found"}),
        )
    });
    let reply = client.post(&url, &[], chat.clone()).await;
    reply.assert_error(400, "invalid_request_error", None);
    assert_eq!(
        reply.json()["error"]["message"],
        "invalid request: model 'nope' not found"
    );

    mock.set(|_| {
        Plan::json(
            429,
            json!({"id": "b3f2", "message": "You are using a Trial key, which is limited to 10 API calls / minute."}),
        )
        .header("retry-after", "7")
    });
    let reply = client.post(&url, &[], chat.clone()).await;
    reply.assert_error(429, "rate_limit_error", Some("upstream_rate_limited"));
    assert_eq!(reply.header("retry-after"), Some("7"));
    assert!(reply.text().contains("Trial key"), "{}", reply.text());

    mock.set(|_| {
        Plan::json(
            500,
            json!({"id": "b3f3", "message": "internal server error"}),
        )
    });
    let reply = client.post(&url, &[], chat.clone()).await;
    reply.assert_error(502, "upstream_error", Some("upstream_error"));
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("provider co") && message.contains("internal server error"),
        "{message}"
    );

    mock.set(|_| Plan::json(401, json!({"id": "b3f4", "message": "invalid api token"})));
    let reply = client.post(&url, &[], chat.clone()).await;
    reply.assert_error(502, "upstream_error", Some("upstream_error"));
    assert_eq!(
        reply.json()["error"]["message"],
        "provider co rejected the gateway's credentials"
    );

    // A 200 whose generation failed.
    mock.set(|_| {
        Plan::json(
            200,
            json!({"id": "x", "finish_reason": "ERROR", "message": {"role": "assistant"}}),
        )
    });
    let reply = client.post(&url, &[], chat.clone()).await;
    reply.assert_error(502, "upstream_error", Some("upstream_error"));

    // A stream that fails before its first event is still a clean HTTP error.
    mock.set(|_| {
        Plan::sse(vec![ev(
            "message-end",
            json!({"delta": {"finish_reason": "ERROR", "error": "model overloaded"}}),
        )])
    });
    let body =
        json!({"model": "chat", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let reply = client.post(&url, &[], body.to_string()).await;
    reply.assert_error(502, "upstream_error", Some("upstream_error"));
    assert!(
        reply.text().contains("model overloaded"),
        "{}",
        reply.text()
    );
    assert!(
        !gw.logs().join("\n").contains(KEY),
        "the key is never logged"
    );
}

#[tokio::test]
async fn in_band_stream_errors_end_with_an_error_event_and_done() {
    let release = Arc::new(Notify::new());
    let gate = release.clone();
    let mock = Mock::start(move |req: &Recorded| {
        let start = if req.path == "/v1/chat" {
            vec![
                line(json!({"event_type": "stream-start", "generation_id": "g"})),
                line(json!({"event_type": "text-generation", "text": "Partial"})),
                Step::Wait(gate.clone()),
                line(json!({"is_finished": true, "event_type": "stream-end", "finish_reason": "ERROR",
                            "response": {"text": "Partial"}})),
            ]
        } else {
            vec![
                ev("message-start", json!({"id": "e", "delta": {"message": {"role": "assistant"}}})),
                ev("content-delta", json!({"index": 0, "delta": {"message": {"content": {"text": "Partial"}}}})),
                Step::Wait(gate.clone()),
                ev("message-end", json!({"delta": {"finish_reason": "ERROR", "error": "generation failed midway"}})),
                done(),
            ]
        };
        Plan::sse(start)
    })
    .await;
    let gw = Gateway::start(&config(&mock));
    for (model, said) in [
        ("chat", "generation failed midway"),
        ("chat-v1", "finish_reason ERROR"),
    ] {
        let body = json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "hi"}]});
        let mut stream = Client::new()
            .open(&gw.url("/v1/chat/completions"), &[], body.to_string())
            .await;
        assert_eq!(stream.status, 200);
        let first = stream.read_until("Partial").await;
        release.notify_one();
        let text = first + &stream.rest().await;
        let events = support::client::sse_data(&text);
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{text}");
        let error: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
        assert_eq!(error["error"]["type"], "upstream_error");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("provider co") && message.contains(said),
            "{message}"
        );
        assert!(
            !text.contains("finish_reason\":\"stop"),
            "a failed stream does not finish cleanly: {text}"
        );
    }
}

#[tokio::test]
async fn a_stream_cut_before_message_end_is_an_error() {
    let mock = Mock::start(|_| {
        let mut steps = v2_text_stream(&["Hel"]);
        steps.truncate(3);
        Plan::sse(steps)
    })
    .await;
    let gw = Gateway::start(&config(&mock));
    let body =
        json!({"model": "chat", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let reply = Client::new()
        .post(&gw.url("/v1/chat/completions"), &[], body.to_string())
        .await;
    assert_eq!(reply.status, 200);
    let events = reply.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(events.iter().any(|e| e.contains("\"content\":\"Hel\"")));
    let error: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("message-end")
    );
}

#[tokio::test]
async fn fields_cohere_cannot_honour_are_refused_before_any_request() {
    let mock = Mock::start(cohere).await;
    let gw = Gateway::start(&config(&mock));
    let client = Client::new();
    let user = json!([{"role": "user", "content": "hi"}]);
    for (model, extra, param) in [
        ("chat", json!({"n": 2}), "n"),
        (
            "chat",
            json!({"logprobs": true, "top_logprobs": 2}),
            "logprobs",
        ),
        ("chat-v1", json!({"n": 3}), "n"),
        ("chat-v1", json!({"logprobs": true}), "logprobs"),
        (
            "chat-v1",
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/cat.png"}}]}]}),
            "messages",
        ),
        (
            "chat-v1",
            json!({"tool_choice": "required", "tools": [{"type": "function", "function": {"name": "f"}}]}),
            "tool_choice",
        ),
    ] {
        let mut body = json!({"model": model, "messages": user});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let reply = client
            .post(&gw.url("/v1/chat/completions"), &[], body.to_string())
            .await;
        reply.assert_error(400, "invalid_request_error", None);
        let e = &reply.json()["error"];
        assert_eq!(e["param"], param, "{e}");
        assert!(
            e["message"].as_str().unwrap().contains("provider co"),
            "the message names the provider: {e}"
        );
    }
    let reply = client
        .post(
            &gw.url("/v1/embeddings"),
            &[],
            r#"{"model":"embed","input":[[1,2,3]]}"#,
        )
        .await;
    reply.assert_error(400, "invalid_request_error", None);
    assert_eq!(mock.hits(), 0, "nothing reached the backend");
}
