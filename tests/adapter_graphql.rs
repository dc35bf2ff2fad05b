//! `type: graphql` end to end: the gateway in front of a mock GraphQL server
//! that speaks GraphQL over HTTP (POST, `data`/`errors`, legacy 200 errors
//! and conforming 4xx statuses).

mod support;

use std::process::Command;

use serde_json::{Value, json};
use support::mock::{Plan, Recorded};
use support::{Client, Gateway, Mock, TempDir};

const QUERY: &str = "mutation Generate($input: ChatInput!) { generateResponse(input: $input) { text model stopReason usage { promptTokens completionTokens } } }";

fn provider(url: &str) -> String {
    format!(
        r#"  gql:
    type: graphql
    url: {url}
    api_key: sk-gql-SECRET
    operation_name: Generate
    query: "{QUERY}"
    variables:
      input:
        messages: "{{{{messages}}}}"
        settings: {{model: "{{{{model}}}}", maxTokens: "{{{{max_tokens}}}}", temperature: "{{{{temperature}}}}", stop: "{{{{stop}}}}"}}
        system: "{{{{system}}}}"
        user: "caller={{{{user}}}}"
    response:
      content: /data/generateResponse/text
      prompt_tokens: /data/generateResponse/usage/promptTokens
      completion_tokens: /data/generateResponse/usage/completionTokens
      finish_reason: /data/generateResponse/stopReason
"#
    )
}

fn config(mock: &Mock) -> String {
    format!(
        "auth: {{required: false}}\nproviders:\n{}models:\n  internal: {{targets: [{{provider: gql, model: internal-7b}}]}}\n",
        provider(&mock.url("/graphql"))
    )
}

/// A conforming GraphQL server's success.
fn answer(_: &Recorded) -> Plan {
    Plan::json(
        200,
        json!({"data": {"generateResponse": {
            "text": "Hello from GraphQL", "model": "internal-7b", "stopReason": "MAX_TOKENS",
            "usage": {"promptTokens": 11, "completionTokens": 4}}}}),
    )
    .header("content-type", "application/graphql-response+json")
}

#[tokio::test]
async fn variables_are_filled_from_the_request_and_the_answer_read_by_pointers() {
    let mock = Mock::start(answer).await;
    let gw = Gateway::start(&config(&mock));
    let reply = Client::new()
        .post(
            &gw.url("/v1/chat/completions"),
            &[("x-request-id", "req-gql-1")],
            json!({"model": "internal", "max_tokens": 64, "stop": "END",
                   "messages": [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Say hello"}]})
            .to_string(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let v = reply.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "internal");
    assert_eq!(
        v["choices"][0]["message"],
        json!({"role": "assistant", "content": "Hello from GraphQL", "refusal": null})
    );
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15})
    );
    assert_eq!(reply.header("x-switchyard-provider"), Some("gql"));
    assert_eq!(reply.header("x-switchyard-model"), Some("internal-7b"));

    let got = mock.last();
    assert_eq!(
        (got.method.as_str(), got.path.as_str()),
        ("POST", "/graphql")
    );
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(
        got.header("accept"),
        Some("application/graphql-response+json, application/json;q=0.9")
    );
    assert_eq!(got.header("authorization"), Some("Bearer sk-gql-SECRET"));
    assert_eq!(got.header("x-request-id"), Some("req-gql-1"));
    assert_eq!(
        got.json(),
        json!({
            "query": QUERY,
            "operationName": "Generate",
            "variables": {"input": {
                "messages": [{"role": "system", "content": "Be brief."},
                             {"role": "user", "content": "Say hello"}],
                "settings": {"model": "internal-7b", "maxTokens": 64, "temperature": null, "stop": ["END"]},
                "system": "Be brief.",
                "user": "caller="
            }}
        })
    );
}

#[tokio::test]
async fn a_stream_request_gets_a_stream_synthesized_from_the_whole_answer() {
    let mock = Mock::start(answer).await;
    let gw = Gateway::start(&config(&mock));
    let reply = Client::new()
        .post(
            &gw.url("/v1/chat/completions"),
            &[],
            json!({"model": "internal", "stream": true, "stream_options": {"include_usage": true},
                   "temperature": 0.5, "messages": [{"role": "user", "content": "Say hello"}]})
            .to_string(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("text/event-stream"));
    let events = reply.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks.len(), 4, "role, content, finish, usage: {events:?}");
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "internal");
    }
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert_eq!(
        chunks[1]["choices"][0]["delta"],
        json!({"content": "Hello from GraphQL"})
    );
    assert_eq!(chunks[2]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks[3]["choices"], json!([]));
    assert_eq!(chunks[3]["usage"]["total_tokens"], 15);

    let sent = mock.last().json();
    assert_eq!(sent["variables"]["input"]["settings"]["temperature"], 0.5);
    assert!(sent.get("stream").is_none(), "{sent}");
}

#[tokio::test]
async fn legacy_completions_go_through_the_same_operation() {
    let mock = Mock::start(answer).await;
    let gw = Gateway::start(&config(&mock));
    let reply = Client::new()
        .post(
            &gw.url("/v1/completions"),
            &[],
            json!({"model": "internal", "prompt": "Once upon a time", "user": "ada"}).to_string(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let v = reply.json();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], "Hello from GraphQL");
    let input = &mock.last().json()["variables"]["input"];
    assert_eq!(
        input["messages"],
        json!([{"role": "user", "content": "Once upon a time"}])
    );
    assert_eq!(input["system"], Value::Null);
    assert_eq!(input["user"], "caller=ada");
}

#[tokio::test]
async fn graphql_errors_in_a_200_are_502_quoting_the_first_message() {
    let mock = Mock::start(|_| {
        Plan::json(
            200,
            json!({
                "data": {"generateResponse": {"text": "partial", "usage": null}},
                "errors": [
                    {"message": "Model quota exceeded", "path": ["generateResponse"],
                     "extensions": {"code": "RATE_LIMITED"}},
                    {"message": "second problem"}
                ]
            }),
        )
    })
    .await;
    let gw = Gateway::start(&config(&mock));
    let reply = Client::new()
        .post(
            &gw.url("/v1/chat/completions"),
            &[],
            support::chat("internal", false),
        )
        .await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(
        reply.error(),
        (
            "upstream_error".to_owned(),
            Some("upstream_error".to_owned())
        )
    );
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("provider gql") && message.contains("Model quota exceeded"),
        "{message}"
    );
    assert!(!message.contains("second problem"), "{message}");
    assert!(!reply.text().contains("partial"));

    // The same through a stream request: still a clean HTTP error.
    let reply = Client::new()
        .post(
            &gw.url("/v1/chat/completions"),
            &[],
            support::chat("internal", true),
        )
        .await;
    assert_eq!(reply.status, 502, "{}", reply.text());
}

#[tokio::test]
async fn http_statuses_map_per_graphql_over_http() {
    let mock = Mock::start(answer).await;
    let gw = Gateway::start(&config(&mock));
    let client = Client::new();
    let url = gw.url("/v1/chat/completions");
    let ask = || client.post(&url, &[], support::chat("internal", false));

    // A conforming server refusing the configured operation: the gateway's
    // config is at fault, not the client.
    mock.set(|_| {
        Plan::json(
            422,
            json!({"errors": [{"message": "Variable \"$input\" got invalid value", "extensions": {"code": "BAD_USER_INPUT"}}]}),
        )
        .header("content-type", "application/graphql-response+json")
    });
    let reply = ask().await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("provider gql")
            && message.contains("(422)")
            && message.contains("got invalid value"),
        "{message}"
    );

    mock.set(|_| Plan::text(400, "Syntax Error: Unexpected Name"));
    let reply = ask().await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert!(reply.text().contains("Syntax Error"), "{}", reply.text());

    mock.set(|_| Plan::text(401, "Unauthorized"));
    let reply = ask().await;
    assert_eq!(reply.status, 502);
    assert_eq!(
        reply.json()["error"]["message"],
        "provider gql rejected the gateway's credentials"
    );

    mock.set(|_| {
        Plan::json(429, json!({"errors": [{"message": "slow down"}]})).header("retry-after", "7")
    });
    let reply = ask().await;
    assert_eq!(reply.status, 429, "{}", reply.text());
    assert_eq!(
        reply.error(),
        (
            "rate_limit_error".to_owned(),
            Some("upstream_rate_limited".to_owned())
        )
    );
    assert_eq!(reply.header("retry-after"), Some("7"));

    mock.set(|_| Plan::text(503, "<html>maintenance</html>"));
    let reply = ask().await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.error().0, "upstream_error");

    // A 200 that is not GraphQL at all.
    mock.set(|_| Plan::text(200, "<html>login</html>"));
    let reply = ask().await;
    assert_eq!(reply.status, 502);
    assert!(!reply.text().contains("sk-gql-SECRET"));
}

#[tokio::test]
async fn what_the_operation_cannot_carry_is_refused_before_any_request() {
    let mock = Mock::start(answer).await;
    let gw = Gateway::start(&config(&mock));
    let client = Client::new();
    for (body, param) in [
        (
            json!({"model": "internal", "messages": [{"role": "user", "content": "Weather?"}],
                   "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]}),
            "tools",
        ),
        (
            json!({"model": "internal", "n": 2, "messages": [{"role": "user", "content": "Hi"}]}),
            "n",
        ),
        (
            json!({"model": "internal", "logprobs": true, "messages": [{"role": "user", "content": "Hi"}]}),
            "logprobs",
        ),
        (
            json!({"model": "internal", "messages": [{"role": "user", "content": "Hi"}],
                   "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}),
            "response_format",
        ),
    ] {
        let reply = client
            .post(&gw.url("/v1/chat/completions"), &[], body.to_string())
            .await;
        assert_eq!(reply.status, 400, "{}", reply.text());
        assert_eq!(reply.json()["error"]["param"], param);
        assert!(reply.text().contains("provider gql"), "{}", reply.text());
    }
    let reply = client
        .post(
            &gw.url("/v1/embeddings"),
            &[],
            json!({"model": "internal", "input": "hi"}).to_string(),
        )
        .await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert_eq!(mock.hits(), 0);
}

#[test]
fn check_reports_bad_placeholders_and_pointers_at_their_path() {
    let dir = TempDir::new();
    let path = dir.path().join("c.yaml");
    let text = format!(
        "providers:\n{}models:\n  internal: {{targets: [{{provider: gql}}]}}\n",
        provider("http://127.0.0.1:1/graphql")
            .replace("{{max_tokens}}", "{{max_tokenz}}")
            .replace(
                "content: /data/generateResponse/text",
                "content: data/generateResponse/text"
            )
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
            "providers.gql.variables.input.settings.maxTokens: unknown placeholder `{{max_tokenz}}`"
        ),
        "{printed}"
    );
    assert!(
        printed.contains("providers.gql.response.content: "),
        "{printed}"
    );
}
