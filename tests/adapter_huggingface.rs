//! `type: huggingface` end to end: the gateway in front of a mock that speaks
//! TGI (`/generate`, `/generate_stream`, `/v1/chat/completions`) and the
//! serverless Inference API (`/models/{id}`, feature extraction) as their
//! references describe them.

mod support;

use bytes::Bytes;
use serde_json::{Value, json};
use support::mock::{Plan, Step};
use support::{Client, Gateway, Mock, Recorded};

const KEY: &str = "hf_test_SECRET_7";

fn config(mock: &Mock) -> String {
    format!(
        "auth: {{required: false}}\n\
         providers:\n\
         \x20 tgi:\n    type: huggingface\n    base_url: {base}/\n    api: generate\n    chat_template: llama3\n    api_key: {KEY}\n\
         \x20 tgi-chat:\n    type: huggingface\n    base_url: {base}\n    api_key: {KEY}\n\
         \x20 hub:\n    type: huggingface\n    api: inference\n    base_url: {base}\n    chat_template: mistral\n    api_key: {KEY}\n\
         models:\n\
         \x20 llama: {{targets: [{{provider: tgi, model: meta-llama/Llama-3.1-8B-Instruct}}]}}\n\
         \x20 llama-chat: {{targets: [{{provider: tgi-chat, model: tgi}}]}}\n\
         \x20 mistral: {{targets: [{{provider: hub, model: mistralai/Mistral-7B-Instruct-v0.2}}]}}\n\
         \x20 bge: {{targets: [{{provider: hub, model: BAAI/bge-small-en-v1.5}}]}}\n",
        base = mock.url("")
    )
}

fn sse(events: &[&str]) -> Plan {
    Plan::sse(
        events
            .iter()
            .map(|e| Step::Send(Bytes::from(e.to_string())))
            .collect(),
    )
    .header("x-accel-buffering", "no")
}

fn token_event(index: u32, id: u32, text: &str, special: bool) -> String {
    format!(
        "data:{}\n\n",
        json!({"index": index, "token": {"id": id, "text": text, "logprob": -0.1, "special": special},
               "generated_text": null, "details": null})
    )
}

/// A TGI `/generate_stream` answer: "Hello" + "!" then EOS, old `data:` framing.
fn token_stream() -> Plan {
    sse(&[
        &token_event(1, 9906, "Hello", false),
        ":\n\n",
        &token_event(2, 0, "!", false),
        &format!(
            "data: {}\n\n",
            json!({"index": 3, "token": {"id": 128009, "text": "<|eot_id|>", "logprob": -0.01, "special": true},
                   "generated_text": "Hello!",
                   "details": {"finish_reason": "eos_token", "generated_tokens": 3, "seed": null, "input_length": 12}})
        ),
    ])
}

fn tgi_chunk(delta: Value, finish: Option<&str>) -> String {
    format!(
        "data: {}\n\n",
        json!({"object": "chat.completion.chunk", "id": "", "created": 1_760_000_000u64,
               "model": "meta-llama/Llama-3.1-8B-Instruct", "system_fingerprint": "3.3.6-native",
               "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
               "usage": null})
    )
}

fn tgi_usage_chunk() -> String {
    format!(
        "data: {}\n\n",
        json!({"object": "chat.completion.chunk", "id": "", "created": 1_760_000_000u64,
               "model": "meta-llama/Llama-3.1-8B-Instruct", "system_fingerprint": "3.3.6-native",
               "choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": 2, "total_tokens": 22}})
    )
}

/// What TGI and the Inference API answer, by path.
fn backend(req: &Recorded) -> Plan {
    let body = req.json();
    match req.path.as_str() {
        "/generate" => Plan::json(
            200,
            json!({"generated_text": "Hello! END",
                   "details": {"finish_reason": "stop_sequence", "generated_tokens": 4, "seed": null,
                               "prefill": [], "tokens": []}}),
        )
        .header("x-prompt-tokens", "12")
        .header("x-generated-tokens", "4"),
        "/generate_stream" => token_stream(),
        "/v1/chat/completions" if body["stream"] == true => sse(&[
            &tgi_chunk(json!({"role": "assistant", "content": "Hi"}), None),
            &tgi_chunk(json!({"role": "assistant", "content": " there"}), None),
            &tgi_chunk(
                json!({"role": "assistant", "content": ""}),
                Some("stop_sequence"),
            ),
            &tgi_usage_chunk(),
            "data: [DONE]\n\n",
        ]),
        "/v1/chat/completions" => Plan::json(
            200,
            json!({"object": "chat.completion", "id": "", "created": 1_760_000_000u64,
                   "model": "meta-llama/Llama-3.1-8B-Instruct", "system_fingerprint": "3.3.6-native",
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi there"},
                                "logprobs": null, "finish_reason": "eos_token"}],
                   "usage": {"prompt_tokens": 20, "completion_tokens": 2, "total_tokens": 22}}),
        ),
        "/models/mistralai/Mistral-7B-Instruct-v0.2" => {
            Plan::json(200, json!([{"generated_text": "Bonjour!"}]))
        }
        "/models/BAAI/bge-small-en-v1.5/pipeline/feature-extraction" => {
            Plan::json(200, json!([[0.25, -0.5, 1.0], [0.0, 0.125, -1.0]]))
        }
        _ => Plan::json(404, json!({"error": "Not Found"})),
    }
}

async fn start() -> (Mock, Gateway) {
    let mock = Mock::start(backend).await;
    let gw = Gateway::start(&config(&mock));
    (mock, gw)
}

/// The chunks of an SSE reply (JSON), asserting it ends with `[DONE]`.
#[tokio::test]
async fn generate_renders_the_template_and_answers_in_openai_shape() {
    let (mock, gw) = start().await;
    let body = json!({"model": "llama", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hello"}],
        "temperature": 0, "top_p": 1, "max_tokens": 50, "stop": "END", "seed": 3});
    let reply = Client::new()
        .post(&gw.url("/v1/chat/completions"), &[], body.to_string())
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    let sent = mock.last();
    assert_eq!(sent.path, "/generate");
    assert_eq!(
        sent.header("authorization"),
        Some("Bearer hf_test_SECRET_7")
    );
    assert_eq!(sent.header("content-type"), Some("application/json"));
    assert_eq!(
        sent.json(),
        json!({
            "inputs": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nSay hello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
            "parameters": {"max_new_tokens": 50, "do_sample": false, "stop": ["END", "<|eot_id|>"], "seed": 3,
                           "return_full_text": false, "details": true}
        })
    );

    let v = reply.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "llama");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(
        v["choices"][0],
        json!({"index": 0, "message": {"role": "assistant", "content": "Hello! ", "refusal": null},
               "logprobs": null, "finish_reason": "stop"}),
        "the matched stop string is cut, as OpenAI does"
    );
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16})
    );
    assert_eq!(reply.header("x-switchyard-provider"), Some("tgi"));
    assert_eq!(
        reply.header("x-switchyard-model"),
        Some("meta-llama/Llama-3.1-8B-Instruct")
    );
}

#[tokio::test]
async fn generate_streams_token_events_as_chunks() {
    let (mock, gw) = start().await;
    let body = json!({"model": "llama", "stream": true, "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "Say hello"}]});
    let reply = Client::new()
        .post(&gw.url("/v1/chat/completions"), &[], body.to_string())
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("text/event-stream"));
    let sent = mock.last();
    assert_eq!(sent.path, "/generate_stream");
    assert_eq!(sent.header("accept"), Some("text/event-stream"));
    assert_eq!(sent.json()["parameters"]["details"], true);
    assert_eq!(sent.json()["parameters"]["max_new_tokens"], 1024);

    let c = reply.chunks();
    assert_eq!(c.len(), 5, "{c:?}");
    let id = c[0]["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("chatcmpl-"));
    for chunk in &c {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], "llama");
        assert_eq!(chunk["id"], id.as_str());
    }
    assert_eq!(
        c[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert_eq!(c[1]["choices"][0]["delta"], json!({"content": "Hello"}));
    assert_eq!(
        c[2]["choices"][0]["delta"],
        json!({"content": "!"}),
        "the special EOS token is not text"
    );
    assert_eq!(
        c[3]["choices"][0],
        json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"})
    );
    assert_eq!(c[4]["choices"], json!([]));
    assert_eq!(
        c[4]["usage"],
        json!({"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15})
    );
}

#[tokio::test]
async fn legacy_completions_send_the_prompt_without_a_template() {
    let (mock, gw) = start().await;
    let client = Client::new();
    for model in ["llama", "llama-chat"] {
        let reply = client
            .post(
                &gw.url("/v1/completions"),
                &[],
                json!({"model": model, "prompt": "Once upon a time", "max_tokens": 8}).to_string(),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let sent = mock.last();
        assert_eq!(sent.path, "/generate", "{model}");
        assert_eq!(sent.json()["inputs"], "Once upon a time");
        assert_eq!(sent.json()["parameters"]["stop"], Value::Null);
        let v = reply.json();
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["model"], model);
        assert_eq!(
            v["choices"][0]["text"], "Hello! END",
            "no stop was asked for"
        );
        assert_eq!(v["usage"]["prompt_tokens"], 12);
    }
    let reply = client
        .post(
            &gw.url("/v1/completions"),
            &[],
            json!({"model": "llama", "prompt": "Hi", "stream": true, "echo": true}).to_string(),
        )
        .await;
    assert_eq!(mock.last().path, "/generate_stream");
    let c = reply.chunks();
    assert!(c.iter().all(|c| c["object"] == "text_completion"));
    let text: String = c
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, "HiHello!", "echo puts the prompt first");
    assert_eq!(c.last().unwrap()["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn messages_api_passes_through_with_tgis_deviations_normalised() {
    let (mock, gw) = start().await;
    let client = Client::new();
    let body = r#"{"model":"llama-chat","messages":[{"role":"user","content":"hi"}],"top_p":1,"response_format":{"type":"json_schema","json_schema":{"name":"g","schema":{"type":"object"}}},"repetition_penalty":1.1}"#;
    let reply = client
        .post(&gw.url("/v1/chat/completions"), &[], body)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let sent = mock.last();
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(
        sent.header("authorization"),
        Some("Bearer hf_test_SECRET_7")
    );
    assert_eq!(
        std::str::from_utf8(&sent.body).unwrap(),
        r#"{"model":"tgi","messages":[{"role":"user","content":"hi"}],"top_p":null,"response_format":{"type":"json","value":{"type":"object"}},"repetition_penalty":1.1}"#
    );
    let v = reply.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "llama-chat");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["choices"][0]["message"]["content"], "Hi there");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["total_tokens"], 22);
    assert!(v.get("system_fingerprint").is_none());

    let body = json!({"model": "llama-chat", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let reply = client
        .post(&gw.url("/v1/chat/completions"), &[], body.to_string())
        .await;
    assert_eq!(
        mock.last().json()["stream_options"],
        json!({"include_usage": true}),
        "usage is always asked of TGI"
    );
    let c = reply.chunks();
    assert_eq!(
        c.len(),
        4,
        "role, two deltas, finish; no usage chunk unasked: {c:?}"
    );
    assert_eq!(
        c[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert_eq!(c[1]["choices"][0]["delta"], json!({"content": "Hi"}));
    assert_eq!(c[2]["choices"][0]["delta"], json!({"content": " there"}));
    assert_eq!(c[3]["choices"][0]["finish_reason"], "stop");
    let id = &c[0]["id"];
    assert!(id.as_str().is_some_and(|id| id.starts_with("chatcmpl-")));
    assert!(c.iter().all(|chunk| chunk["id"] == *id));
}

#[tokio::test]
async fn tool_calls_go_through_the_messages_api_both_ways() {
    let mock = Mock::start(|req: &Recorded| {
        if req.json()["stream"] == true {
            let call = |name: Value, arguments: &str| {
                json!({"role": "assistant", "tool_calls": [{"index": 0, "id": "0", "type": "function",
                       "function": {"name": name, "arguments": arguments}}]})
            };
            sse(&[
                &tgi_chunk(call(json!("get_weather"), "{"), None),
                &tgi_chunk(call(Value::Null, " \"city\":"), None),
                &tgi_chunk(call(Value::Null, " \"Oslo\"}"), None),
                &tgi_usage_chunk(),
                "data: [DONE]\n\n",
            ])
        } else {
            Plan::json(
                200,
                json!({"object": "chat.completion", "id": "", "created": 1, "model": "m", "system_fingerprint": "f",
                       "choices": [{"index": 0, "message": {"role": "assistant", "tool_calls": [
                           {"id": "0", "type": "function", "function": {"description": null, "name": "get_weather",
                            "arguments": "{\"city\":\"Oslo\"}"}}]}, "logprobs": null, "finish_reason": "eos_token"}],
                       "usage": {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39}}),
            )
        }
    })
    .await;
    let gw = Gateway::start(&config(&mock));
    let client = Client::new();
    let body = json!({"model": "llama-chat", "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_a", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\":\"Bergen\"}"}}]},
            {"role": "tool", "tool_call_id": "call_a", "content": "9C"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather now",
                   "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}}});
    let reply = client
        .post(&gw.url("/v1/chat/completions"), &[], body.to_string())
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let sent = mock.last().json();
    assert_eq!(sent["tools"], body["tools"], "tools reach TGI as sent");
    assert_eq!(sent["messages"], body["messages"]);
    assert_eq!(sent["tool_choice"], body["tool_choice"]);
    let v = reply.json();
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"], "{\"city\":\"Oslo\"}");
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(v["choices"][0]["message"]["content"], Value::Null);
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let reply = client
        .post(&gw.url("/v1/chat/completions"), &[], streamed.to_string())
        .await;
    let c = reply.chunks();
    assert_eq!(c.len(), 6, "{c:?}");
    let first = &c[1]["choices"][0]["delta"]["tool_calls"][0];
    assert_eq!(first["index"], 0);
    assert_eq!(first["type"], "function");
    assert_eq!(first["function"]["name"], "get_weather");
    assert!(first["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(
        c[2]["choices"][0]["delta"]["tool_calls"][0],
        json!({"index": 0, "function": {"arguments": " \"city\":"}})
    );
    let arguments: String = c
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(arguments, "{ \"city\": \"Oslo\"}");
    assert_eq!(c[4]["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(c[5]["usage"]["total_tokens"], 22);
}

#[tokio::test]
async fn the_inference_api_answers_whole_and_streams_are_synthesized() {
    let (mock, gw) = start().await;
    let client = Client::new();
    let body = json!({"model": "mistral", "messages": [{"role": "user", "content": "Salut"}], "max_tokens": 20});
    let reply = client
        .post(&gw.url("/v1/chat/completions"), &[], body.to_string())
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let sent = mock.last();
    assert_eq!(sent.path, "/models/mistralai/Mistral-7B-Instruct-v0.2");
    assert_eq!(
        sent.header("authorization"),
        Some("Bearer hf_test_SECRET_7")
    );
    assert_eq!(
        sent.json(),
        json!({"inputs": "<s>[INST] Salut [/INST]",
               "parameters": {"max_new_tokens": 20, "do_sample": true, "stop": ["</s>"],
                              "return_full_text": false, "details": true},
               "options": {"use_cache": false}})
    );
    let v = reply.json();
    assert_eq!(v["choices"][0]["message"]["content"], "Bonjour!");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["model"], "mistral");

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let reply = client
        .post(&gw.url("/v1/chat/completions"), &[], streamed.to_string())
        .await;
    assert_eq!(reply.header("content-type"), Some("text/event-stream"));
    assert_eq!(
        mock.last().header("accept"),
        Some("application/json"),
        "the backend is asked for a whole answer"
    );
    let c = reply.chunks();
    assert_eq!(c.len(), 4, "role, content, finish, usage: {c:?}");
    assert_eq!(c[1]["choices"][0]["delta"], json!({"content": "Bonjour!"}));
    assert_eq!(c[2]["choices"][0]["finish_reason"], "stop");
    assert!(c[3]["usage"]["completion_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn embeddings_come_from_feature_extraction() {
    let (mock, gw) = start().await;
    let client = Client::new();
    let reply = client
        .post(
            &gw.url("/v1/embeddings"),
            &[],
            json!({"model": "bge", "input": ["first text", "second"], "encoding_format": "float"})
                .to_string(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let sent = mock.last();
    assert_eq!(
        sent.path,
        "/models/BAAI/bge-small-en-v1.5/pipeline/feature-extraction"
    );
    assert_eq!(sent.json(), json!({"inputs": ["first text", "second"]}));
    let v = reply.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "bge");
    assert_eq!(
        v["data"],
        json!([{"object": "embedding", "index": 0, "embedding": [0.25, -0.5, 1.0]},
               {"object": "embedding", "index": 1, "embedding": [0.0, 0.125, -1.0]}])
    );
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 5, "total_tokens": 5}),
        "estimated at 4 bytes per token"
    );

    let reply = client
        .post(
            &gw.url("/v1/embeddings"),
            &[],
            json!({"model": "llama", "input": "x"}).to_string(),
        )
        .await;
    reply.assert_error(400, "invalid_request_error", None);
}

#[tokio::test]
async fn backend_errors_map_per_the_contract() {
    let mock = Mock::start(|_| Plan::json(200, json!({}))).await;
    let gw = Gateway::start(&config(&mock));
    let client = Client::new();
    let chat = |model: &str| {
        json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}).to_string()
    };

    mock.set(|_| {
        Plan::json(
            422,
            json!({"error": "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096", "error_type": "validation"}),
        )
    });
    let reply = client
        .post(&gw.url("/v1/chat/completions"), &[], chat("llama"))
        .await;
    reply.assert_error(422, "invalid_request_error", Some("validation"));
    assert_eq!(
        reply.json()["error"]["message"],
        "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096"
    );

    mock.set(|_| {
        Plan::json(
            429,
            json!({"error": "Model is overloaded", "error_type": "overloaded"}),
        )
        .header("retry-after", "30")
    });
    let reply = client
        .post(&gw.url("/v1/chat/completions"), &[], chat("llama-chat"))
        .await;
    reply.assert_error(429, "rate_limit_error", Some("upstream_rate_limited"));
    assert_eq!(reply.header("retry-after"), Some("30"));

    mock.set(|_| {
        Plan::json(
            500,
            json!({"error": "Incomplete generation", "error_type": "incomplete_generation"}),
        )
    });
    let reply = client
        .post(&gw.url("/v1/chat/completions"), &[], chat("llama"))
        .await;
    reply.assert_error(502, "upstream_error", Some("upstream_error"));
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("provider tgi") && message.contains("Incomplete generation"),
        "{message}"
    );

    mock.set(|_| {
        Plan::json(
            503,
            json!({"error": "Model mistralai/Mistral-7B-Instruct-v0.2 is currently loading", "estimated_time": 20.0}),
        )
    });
    let reply = client
        .post(&gw.url("/v1/chat/completions"), &[], chat("mistral"))
        .await;
    reply.assert_error(502, "upstream_error", Some("upstream_error"));
    assert!(
        reply.text().contains("currently loading"),
        "{}",
        reply.text()
    );

    mock.set(|_| {
        Plan::json(
            401,
            json!({"error": "Invalid credentials in Authorization header"}),
        )
    });
    let reply = client
        .post(&gw.url("/v1/chat/completions"), &[], chat("mistral"))
        .await;
    reply.assert_error(502, "upstream_error", Some("upstream_error"));
    assert_eq!(
        reply.json()["error"]["message"],
        "provider hub rejected the gateway's credentials"
    );
    assert!(!gw.logs().join("\n").contains(KEY));
}

#[tokio::test]
async fn in_band_stream_errors_end_the_stream_with_an_error_event() {
    let mock = Mock::start(|req: &Recorded| {
        if req.path == "/generate_stream" {
            sse(&[
                &token_event(1, 5, "Hel", false),
                "data: {\"error\":\"Request failed during generation: Server error: CUDA out of memory\",\"error_type\":\"generation\"}\n\n",
            ])
        } else {
            sse(&[
                &tgi_chunk(json!({"role": "assistant", "content": "Hi"}), None),
                "data: {\"error\":{\"message\":\"Request failed during generation\",\"http_status_code\":424}}\n\n",
                "data: [DONE]\n\n",
            ])
        }
    })
    .await;
    let gw = Gateway::start(&config(&mock));
    for model in ["llama", "llama-chat"] {
        let body = json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "hi"}]});
        let reply = Client::new()
            .post(&gw.url("/v1/chat/completions"), &[], body.to_string())
            .await;
        assert_eq!(reply.status, 200);
        let events = reply.events();
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{model}");
        let error: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
        assert_eq!(error["error"]["type"], "upstream_error", "{model}");
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Request failed during generation"),
            "{error}"
        );
        let first: Value = serde_json::from_str(&events[0]).unwrap();
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    }

    // A token stream cut before its last event is a failure, not a clean end.
    mock.set(|_| sse(&[&token_event(1, 5, "Hel", false)]));
    let body =
        json!({"model": "llama", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let reply = Client::new()
        .post(&gw.url("/v1/chat/completions"), &[], body.to_string())
        .await;
    let events = reply.events();
    assert!(events[events.len() - 2].contains("\"error\""), "{events:?}");
}

#[tokio::test]
async fn what_a_surface_cannot_honour_is_refused_before_any_request() {
    let (mock, gw) = start().await;
    let client = Client::new();
    let user = json!([{"role": "user", "content": "hi"}]);
    let cases: &[(Value, &str)] = &[
        (json!({"model": "llama", "messages": user, "n": 2}), "n"),
        (
            json!({"model": "llama-chat", "messages": user, "n": 2}),
            "n",
        ),
        (
            json!({"model": "llama", "messages": user, "logprobs": true}),
            "logprobs",
        ),
        (
            json!({"model": "llama", "messages": user, "tools": [{"type": "function", "function": {"name": "f"}}]}),
            "tools",
        ),
        (
            json!({"model": "mistral", "messages": user, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}),
            "response_format",
        ),
        (
            json!({"model": "llama", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}),
            "messages",
        ),
        (
            json!({"model": "mistral", "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}),
            "messages",
        ),
    ];
    for (body, param) in cases {
        let reply = client
            .post(&gw.url("/v1/chat/completions"), &[], body.to_string())
            .await;
        reply.assert_error(400, "invalid_request_error", None);
        assert_eq!(reply.json()["error"]["param"], *param, "{body}");
    }
    let reply = client
        .post(
            &gw.url("/v1/completions"),
            &[],
            json!({"model": "llama", "prompt": "a", "suffix": "b"}).to_string(),
        )
        .await;
    reply.assert_error(400, "invalid_request_error", None);
    assert_eq!(mock.hits(), 0, "nothing reached the backend");
}
