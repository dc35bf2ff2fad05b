//! `type: ollama` end to end: the gateway against a mock that speaks Ollama's
//! native API (`/api/chat` with NDJSON streams, `/api/embed`), and clients
//! that see only OpenAI shapes.

mod support;

use bytes::Bytes;
use serde_json::{Value, json};
use support::mock::{Plan, Recorded, Step};
use support::{Client, Gateway, Mock, TempDir};

const CREATED_AT: &str = "2025-07-07T20:22:19.18Z";

fn config(mock: &Mock, extra: &str) -> String {
    format!(
        "auth: {{required: false}}\n\
         providers:\n  local:\n    type: ollama\n    base_url: {base}/\n{extra}\
         models:\n  chat: {{targets: [{{provider: local, model: \"llama3.2:latest\"}}]}}\n  \
         embed: {{targets: [{{provider: local, model: all-minilm}}]}}\n",
        base = mock.url("")
    )
}

/// One NDJSON line as a step.
fn line(v: Value) -> Step {
    Step::Send(Bytes::from(format!("{v}\n")))
}

fn ndjson(steps: Vec<Step>) -> Plan {
    Plan {
        status: 200,
        headers: vec![("content-type".into(), "application/x-ndjson".into())],
        steps,
    }
}

fn reply_line(model: &str, content: &str) -> Value {
    json!({"model": model, "created_at": CREATED_AT,
           "message": {"role": "assistant", "content": content}, "done": false})
}

fn last_line(model: &str, reason: &str) -> Value {
    json!({"model": model, "created_at": CREATED_AT,
           "message": {"role": "assistant", "content": ""}, "done": true, "done_reason": reason,
           "total_duration": 4883583458u64, "load_duration": 1334875, "prompt_eval_count": 26,
           "prompt_eval_duration": 342546000, "eval_count": 2, "eval_duration": 4535599000u64})
}

/// An Ollama server: streams unless the request says `"stream": false`
/// (Ollama's default is to stream); "Hello world" as the answer.
fn ollama(req: &Recorded) -> Plan {
    let body = req.json();
    let model = body["model"].as_str().unwrap_or("unknown").to_owned();
    match req.path.as_str() {
        "/api/embed" => {
            let n = body["input"].as_array().map_or(1, Vec::len);
            let vectors: Vec<Value> = (0..n).map(|i| json!([0.5, -0.25, i as f64])).collect();
            Plan::json(
                200,
                json!({"model": model, "embeddings": vectors, "total_duration": 14143917,
                       "load_duration": 1019500, "prompt_eval_count": 8}),
            )
        }
        "/api/chat" if body["stream"] == Value::Bool(false) => {
            let mut whole = last_line(&model, "stop");
            whole["message"]["content"] = json!("Hello world");
            Plan::json(200, whole)
        }
        "/api/chat" => {
            let first = reply_line(&model, "Hello").to_string();
            let (a, b) = first.split_at(first.len() / 2);
            ndjson(vec![
                line(reply_line(&model, "")),
                Step::Send(Bytes::from(a.to_owned())),
                Step::Send(Bytes::from(format!("{b}\n"))),
                line(reply_line(&model, " world")),
                line(last_line(&model, "stop")),
            ])
        }
        _ => Plan::text(404, "404 page not found"),
    }
}

fn data_events(text: &str) -> Vec<Value> {
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    support::client::sse_data(text)
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[tokio::test]
async fn a_whole_chat_answer_has_the_openai_shape() {
    let mock = Mock::start(ollama).await;
    let gw = Gateway::start(&config(&mock, ""));
    let reply = Client::new()
        .post(
            &gw.url("/v1/chat/completions"),
            &[],
            json!({"model": "chat", "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Say hello"}],
                "max_tokens": 20, "temperature": 0.2, "stop": "\n\n", "seed": 7})
            .to_string(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.header("x-switchyard-provider"), Some("local"));
    assert_eq!(reply.header("x-switchyard-model"), Some("llama3.2:latest"));
    let v = reply.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "chat");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello world");
    assert!(v["choices"][0]["message"].get("tool_calls").is_none());
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 26, "completion_tokens": 2, "total_tokens": 28})
    );

    let sent = mock.last();
    assert_eq!(
        (sent.method.as_str(), sent.path.as_str()),
        ("POST", "/api/chat")
    );
    assert_eq!(sent.header("content-type"), Some("application/json"));
    assert_eq!(sent.header("accept"), Some("application/json"));
    assert_eq!(
        sent.header("authorization"),
        None,
        "no api_key, no credential"
    );
    assert!(sent.header("x-request-id").is_some());
    assert_eq!(
        sent.json(),
        json!({"model": "llama3.2:latest",
               "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}],
               "stream": false,
               "options": {"num_predict": 20, "temperature": 0.2, "stop": ["\n\n"], "seed": 7}})
    );
}

#[tokio::test]
async fn a_stream_becomes_openai_chunks_with_usage() {
    let mock = Mock::start(ollama).await;
    let gw = Gateway::start(&config(&mock, ""));
    let mut stream = Client::new()
        .open(
            &gw.url("/v1/chat/completions"),
            &[],
            json!({"model": "chat", "messages": [{"role": "user", "content": "Say hello"}],
                   "stream": true, "stream_options": {"include_usage": true}})
            .to_string(),
        )
        .await;
    assert_eq!(stream.status, 200);
    assert_eq!(
        stream.headers.get("content-type").unwrap(),
        "text/event-stream"
    );
    let events = data_events(&stream.read_until("data: [DONE]").await);
    assert!(stream.next().await.is_none());
    let deltas: Vec<&Value> = events.iter().map(|e| &e["choices"][0]["delta"]).collect();
    assert_eq!(events.len(), 5, "{events:?}");
    assert_eq!(*deltas[0], json!({"role": "assistant", "content": ""}));
    assert_eq!(*deltas[1], json!({"content": "Hello"}));
    assert_eq!(*deltas[2], json!({"content": " world"}));
    assert_eq!(*deltas[3], json!({}));
    assert_eq!(events[3]["choices"][0]["finish_reason"], "stop");
    assert_eq!(events[4]["choices"], json!([]));
    assert_eq!(
        events[4]["usage"],
        json!({"prompt_tokens": 26, "completion_tokens": 2, "total_tokens": 28})
    );
    let id = &events[0]["id"];
    for e in &events {
        assert_eq!(e["object"], "chat.completion.chunk");
        assert_eq!(e["model"], "chat");
        assert_eq!(&e["id"], id);
    }

    let sent = mock.last();
    assert_eq!(sent.header("accept"), Some("application/x-ndjson"));
    assert_eq!(
        sent.json(),
        json!({"model": "llama3.2:latest", "messages": [{"role": "user", "content": "Say hello"}], "stream": true})
    );
}

#[tokio::test]
async fn tool_calls_both_ways() {
    let mock = Mock::start(|req: &Recorded| {
        let calls = json!([
            {"function": {"index": 0, "name": "get_weather", "arguments": {"city": "Oslo", "unit": "c"}}},
            {"id": "call_x7", "function": {"index": 1, "name": "get_time", "arguments": {"tz": "CET"}}}]);
        let model = "llama3.2:latest";
        if req.json()["stream"] == Value::Bool(false) {
            let mut whole = last_line(model, "stop");
            whole["message"]["tool_calls"] = calls;
            return Plan::json(200, whole);
        }
        let mut with_calls = reply_line(model, "");
        with_calls["message"]["tool_calls"] = calls;
        ndjson(vec![
            line(reply_line(model, "Checking.")),
            line(with_calls),
            line(last_line(model, "stop")),
        ])
    })
    .await;
    let gw = Gateway::start(&config(&mock, ""));
    let client = Client::new();
    let mut body = json!({"model": "chat",
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
            {"role": "tool", "tool_call_id": "call_0", "content": "12C"},
            {"role": "user", "content": "And the time?"}],
        "tools": [
            {"type": "function", "function": {"name": "get_weather", "description": "Weather by city",
             "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
            {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}],
        "tool_choice": "auto"});

    let reply = client
        .post(&gw.url("/v1/chat/completions"), &[], body.to_string())
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let sent = mock.last().json();
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "call_0", "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Oslo"}}}]},
            {"role": "tool", "content": "12C", "tool_name": "get_weather", "tool_call_id": "call_0"},
            {"role": "user", "content": "And the time?"}])
    );
    assert_eq!(sent["tools"], body["tools"]);
    let v = reply.json();
    let message = &v["choices"][0]["message"];
    assert_eq!(message["content"], Value::Null);
    assert_eq!(
        message["tool_calls"],
        json!([
            {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\",\"unit\":\"c\"}"}},
            {"id": "call_x7", "type": "function", "function": {"name": "get_time", "arguments": "{\"tz\":\"CET\"}"}}])
    );
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");

    body["stream"] = json!(true);
    let reply = client
        .post(&gw.url("/v1/chat/completions"), &[], body.to_string())
        .await;
    let events = data_events(&reply.text());
    let deltas: Vec<&Value> = events.iter().map(|e| &e["choices"][0]["delta"]).collect();
    assert_eq!(events.len(), 5, "{events:?}");
    assert_eq!(*deltas[0], json!({"role": "assistant", "content": ""}));
    assert_eq!(*deltas[1], json!({"content": "Checking."}));
    assert_eq!(
        *deltas[2],
        json!({"tool_calls": [{"index": 0, "id": "call_0", "type": "function",
               "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\",\"unit\":\"c\"}"}}]})
    );
    assert_eq!(
        *deltas[3],
        json!({"tool_calls": [{"index": 1, "id": "call_x7", "type": "function",
               "function": {"name": "get_time", "arguments": "{\"tz\":\"CET\"}"}}]})
    );
    assert_eq!(
        events[4]["choices"][0]["finish_reason"], "tool_calls",
        "done_reason stop after tool calls"
    );

    body["tool_choice"] = json!("none");
    client
        .post(&gw.url("/v1/chat/completions"), &[], body.to_string())
        .await;
    assert!(mock.last().json().get("tools").is_none());
}

#[tokio::test]
async fn legacy_completions_go_through_api_chat() {
    let mock = Mock::start(ollama).await;
    let gw = Gateway::start(&config(&mock, ""));
    let client = Client::new();
    let reply = client
        .post(
            &gw.url("/v1/completions"),
            &[],
            r#"{"model":"chat","prompt":"Say hello","max_tokens":5}"#,
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let v = reply.json();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["model"], "chat");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(v["choices"][0]["text"], "Hello world");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["total_tokens"], 28);
    let sent = mock.last();
    assert_eq!(sent.path, "/api/chat");
    assert_eq!(
        sent.json(),
        json!({"model": "llama3.2:latest", "messages": [{"role": "user", "content": "Say hello"}],
               "stream": false, "options": {"num_predict": 5}})
    );

    let reply = client
        .post(
            &gw.url("/v1/completions"),
            &[],
            r#"{"model":"chat","prompt":"Say hello","stream":true}"#,
        )
        .await;
    let events = data_events(&reply.text());
    let texts: Vec<&str> = events
        .iter()
        .map(|e| e["choices"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["Hello", " world", ""]);
    assert!(events.iter().all(|e| e["object"] == "text_completion"));
    assert_eq!(events[2]["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn embeddings_go_through_api_embed() {
    let mock = Mock::start(ollama).await;
    let gw = Gateway::start(&config(&mock, ""));
    let client = Client::new();
    let reply = client
        .post(
            &gw.url("/v1/embeddings"),
            &[],
            r#"{"model":"embed","input":["first","second"]}"#,
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let v = reply.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "embed");
    assert_eq!(
        v["data"][0],
        json!({"object": "embedding", "index": 0, "embedding": [0.5, -0.25, 0.0]})
    );
    assert_eq!(v["data"][1]["index"], 1);
    assert_eq!(v["data"][1]["embedding"], json!([0.5, -0.25, 1.0]));
    assert_eq!(v["usage"], json!({"prompt_tokens": 8, "total_tokens": 8}));
    let sent = mock.last();
    assert_eq!(sent.path, "/api/embed");
    assert_eq!(
        sent.json(),
        json!({"model": "all-minilm", "input": ["first", "second"]})
    );

    let reply = client
        .post(
            &gw.url("/v1/embeddings"),
            &[],
            r#"{"model":"embed","input":"one","encoding_format":"base64"}"#,
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(reply.json()["data"][0]["embedding"].is_string());
    assert_eq!(mock.last().json()["input"], json!(["one"]));
}

#[tokio::test]
async fn provider_options_and_key_reach_ollama() {
    let mock = Mock::start(ollama).await;
    let gw = Gateway::start(&config(
        &mock,
        "    api_key: ollama-remote-key\n    keep_alive: 30m\n    options: {num_ctx: 8192, temperature: 0.7}\n",
    ));
    let client = Client::new();
    client
        .post(
            &gw.url("/v1/chat/completions"),
            &[],
            r#"{"model":"chat","messages":[{"role":"user","content":"x"}],"temperature":0,"response_format":{"type":"json_object"}}"#,
        )
        .await;
    let sent = mock.last();
    assert_eq!(
        sent.header("authorization"),
        Some("Bearer ollama-remote-key")
    );
    assert_eq!(
        sent.json(),
        json!({"model": "llama3.2:latest", "messages": [{"role": "user", "content": "x"}], "stream": false,
               "format": "json", "options": {"num_ctx": 8192, "temperature": 0.0}, "keep_alive": 1800})
    );
    client
        .post(
            &gw.url("/v1/embeddings"),
            &[],
            r#"{"model":"embed","input":"x"}"#,
        )
        .await;
    assert_eq!(
        mock.last().json(),
        json!({"model": "all-minilm", "input": ["x"], "options": {"num_ctx": 8192, "temperature": 0.7},
               "keep_alive": 1800})
    );
}

#[tokio::test]
async fn backend_errors_map_per_the_contract() {
    let mock = Mock::start(ollama).await;
    let gw = Gateway::start(&config(&mock, ""));
    let client = Client::new();
    let chat = r#"{"model":"chat","messages":[{"role":"user","content":"x"}]}"#;

    mock.set(|_| {
        Plan::json(
            404,
            json!({"error": "model \"llama3.2:latest\" not found, try pulling it first"}),
        )
    });
    let reply = client
        .post(&gw.url("/v1/chat/completions"), &[], chat)
        .await;
    assert_eq!(reply.status, 404, "{}", reply.text());
    assert_eq!(
        reply.error(),
        (
            "invalid_request_error".into(),
            Some("model_not_found".into())
        )
    );
    assert_eq!(
        reply.json()["error"]["message"],
        "model \"llama3.2:latest\" not found, try pulling it first"
    );

    mock.set(|_| Plan::json(400, json!({"error": "invalid options: num_gpu"})));
    let reply = client
        .post(&gw.url("/v1/chat/completions"), &[], chat)
        .await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.error(), ("invalid_request_error".into(), None));
    assert_eq!(reply.json()["error"]["message"], "invalid options: num_gpu");

    mock.set(|_| {
        Plan::json(429, json!({"error": "too many requests"})).header("retry-after", "30")
    });
    let reply = client
        .post(&gw.url("/v1/chat/completions"), &[], chat)
        .await;
    assert_eq!(reply.status, 429);
    assert_eq!(
        reply.error(),
        (
            "rate_limit_error".into(),
            Some("upstream_rate_limited".into())
        )
    );
    assert_eq!(reply.header("retry-after"), Some("30"));

    mock.set(|_| {
        Plan::json(
            500,
            json!({"error": "llama runner process has terminated: signal: killed"}),
        )
    });
    let reply = client
        .post(&gw.url("/v1/chat/completions"), &[], chat)
        .await;
    assert_eq!(reply.status, 502);
    assert_eq!(
        reply.error(),
        ("upstream_error".into(), Some("upstream_error".into()))
    );
    let said = reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(said.contains("provider local"), "{said}");
    assert!(
        said.contains("llama runner process has terminated"),
        "{said}"
    );

    mock.set(|_| {
        Plan::json(
            200,
            json!({"error": "an error was encountered while running the model"}),
        )
    });
    let reply = client
        .post(&gw.url("/v1/chat/completions"), &[], chat)
        .await;
    assert_eq!(
        reply.status, 502,
        "a 200 body with an error is the backend's failure"
    );
}

#[tokio::test]
async fn failures_inside_a_stream_end_it_with_an_error_event() {
    let mock = Mock::start(|_: &Recorded| {
        ndjson(vec![
            line(reply_line("llama3.2", "Hel")),
            line(json!({"error": "an error was encountered while running the model: CUDA error"})),
        ])
    })
    .await;
    let gw = Gateway::start(&config(&mock, ""));
    let client = Client::new();
    let body = r#"{"model":"chat","messages":[{"role":"user","content":"x"}],"stream":true}"#;
    let reply = client
        .post(&gw.url("/v1/chat/completions"), &[], body)
        .await;
    assert_eq!(reply.status, 200);
    let events = reply.events();
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let error: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("provider local"), "{message}");
    assert!(message.contains("CUDA error"), "{message}");
    assert_eq!(error["error"]["code"], "upstream_error");
    let content: Value = serde_json::from_str(&events[1]).unwrap();
    assert_eq!(content["choices"][0]["delta"]["content"], "Hel");
    assert!(
        !reply.text().contains("finish_reason\":\""),
        "no finish chunk after a failure"
    );

    mock.set(|_| ndjson(vec![line(reply_line("llama3.2", "Hel"))]));
    let reply = client
        .post(&gw.url("/v1/chat/completions"), &[], body)
        .await;
    let events = reply.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let error: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("done: true"),
        "a stream cut short is a failure: {error}"
    );
}

#[tokio::test]
async fn fields_ollama_cannot_honour_are_refused_before_any_request() {
    let mock = Mock::start(ollama).await;
    let gw = Gateway::start(&config(&mock, ""));
    let client = Client::new();
    for (body, param, words) in [
        (
            json!({"model": "chat", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}),
            "messages",
            "image_url",
        ),
        (
            json!({"model": "chat", "messages": [{"role": "user", "content": "x"}], "n": 2}),
            "n",
            "`n`",
        ),
        (
            json!({"model": "chat", "messages": [{"role": "user", "content": "x"}], "logprobs": true}),
            "logprobs",
            "`logprobs`",
        ),
        (
            json!({"model": "chat", "prompt": "x", "logprobs": 3}),
            "logprobs",
            "`logprobs`",
        ),
    ] {
        let url = if body.get("prompt").is_some() {
            gw.url("/v1/completions")
        } else {
            gw.url("/v1/chat/completions")
        };
        let reply = client.post(&url, &[], body.to_string()).await;
        assert_eq!(reply.status, 400, "{}", reply.text());
        assert_eq!(reply.error(), ("invalid_request_error".into(), None));
        let e = &reply.json()["error"];
        assert_eq!(e["param"], param);
        let message = e["message"].as_str().unwrap();
        assert!(
            message.contains(words) && message.contains("provider local"),
            "{message}"
        );
    }
    assert_eq!(mock.hits(), 0);

    let reply = client
        .post(
            &gw.url("/v1/chat/completions"),
            &[],
            json!({"model": "chat", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]})
            .to_string(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        mock.last().json()["messages"],
        json!([{"role": "user", "content": "What is this?", "images": ["iVBORw0KGgo="]}])
    );
}

#[test]
fn check_knows_the_type_and_its_options() {
    let check = |providers: &str| {
        let dir = TempDir::new();
        let path = dir.path().join("c.yaml");
        std::fs::write(
            &path,
            format!("providers:\n{providers}models:\n  \"ollama/*\": {{targets: [{{provider: ollama}}]}}\n"),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["check", "--config"])
            .arg(&path)
            .env_remove("SWITCHYARD_CONFIG")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = check("  ollama: {type: ollama}\n");
    assert_eq!(code, Some(0), "base_url defaults to a local Ollama: {out}");
    let (code, out) = check(
        "  ollama: {type: ollama, base_url: \"http://gpu:11434/\", keep_alive: -1, options: {num_ctx: 8192}}\n",
    );
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = check("  ollama: {type: ollama, keep_alive: soon, num_ctx: 8192}\n");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("providers.ollama.keep_alive"), "{out}");
    assert!(out.contains("num_ctx"), "{out}");
}
