//! Gateway keys, allow-lists, and credentials injected per provider.

mod support;

use support::{Client, Gateway, Mock, chat, digest};

const TEAM_KEY: &str = "sk-sy-team-key-0123456789";
const OTHER_KEY: &str = "sk-sy-other-key-9876543210";

fn config(mock: &Mock) -> String {
    format!(
        r#"
keys:
  - id: team
    sha256: "{team}"
    models: ["chat-*"]
  - id: other
    sha256: "{other}"
providers:
  bearer:
    type: openai
    base_url: {base}
    api_key: ${{PROVIDER_KEY}}
  xkey:
    type: openai
    base_url: {base}
    api_key: provider-secret-2
    auth_header: x-api-key
  custom:
    type: openai
    base_url: {base}
    api_key: provider-secret-3
    auth_header: {{name: X-Backend-Token}}
    headers: {{OpenAI-Organization: org-42}}
  open:
    type: openai
    base_url: {base}
    api_key: never-sent
    auth_header: none
models:
  chat-bearer: {{targets: [{{provider: bearer, model: m}}]}}
  chat-xkey: {{targets: [{{provider: xkey, model: m}}]}}
  chat-custom: {{targets: [{{provider: custom, model: m}}]}}
  chat-open: {{targets: [{{provider: open, model: m}}]}}
  private: {{targets: [{{provider: open, model: m}}]}}
"#,
        team = digest(TEAM_KEY),
        other = digest(OTHER_KEY),
        base = mock.url("/v1"),
    )
}

fn start(mock: &Mock) -> Gateway {
    Gateway::start_with_env(&config(mock), &[("PROVIDER_KEY", "provider-secret-1")])
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

#[tokio::test]
async fn provider_credentials_are_injected_and_client_keys_never_forwarded() {
    let mock = Mock::openai().await;
    let gw = start(&mock);
    let client = Client::new();
    let auth = bearer(TEAM_KEY);
    let headers = [
        ("authorization", auth.as_str()),
        ("x-stainless-lang", "python"),
    ];

    let cases: &[(&str, Option<(&str, &str)>)] = &[
        (
            "chat-bearer",
            Some(("authorization", "Bearer provider-secret-1")),
        ),
        ("chat-xkey", Some(("x-api-key", "provider-secret-2"))),
        (
            "chat-custom",
            Some(("x-backend-token", "provider-secret-3")),
        ),
        ("chat-open", None),
    ];
    for (model, expected) in cases {
        let reply = client
            .post(
                &gw.url("/v1/chat/completions"),
                &headers,
                chat(model, false),
            )
            .await;
        assert_eq!(reply.status, 200, "{model}: {}", reply.text());
        let sent = mock.last();
        match expected {
            Some((name, value)) => assert_eq!(sent.header(name), Some(*value), "{model}"),
            None => {
                assert!(sent.header("authorization").is_none(), "{model}");
                assert!(sent.header("x-api-key").is_none(), "{model}");
            }
        }
        for (name, value) in &sent.headers {
            let value = value.to_str().unwrap_or("");
            assert!(
                !value.contains(TEAM_KEY),
                "{model}: the client's key leaked upstream in {name}"
            );
        }
        assert!(
            sent.header("x-stainless-lang").is_none(),
            "client headers are not forwarded"
        );
        if *model == "chat-custom" {
            assert_eq!(sent.header("openai-organization"), Some("org-42"));
        }
    }
    // The client's key never shows in the gateway's own logs either.
    let logs = gw.logs().join("\n");
    assert!(!logs.contains(TEAM_KEY));
    assert!(!logs.contains("provider-secret"));
}

#[tokio::test]
async fn both_key_headers_work() {
    let mock = Mock::openai().await;
    let gw = start(&mock);
    let client = Client::new();
    let url = gw.url("/v1/chat/completions");
    let by_bearer = client
        .post(
            &url,
            &[("authorization", &bearer(OTHER_KEY))],
            chat("private", false),
        )
        .await;
    assert_eq!(by_bearer.status, 200);
    let by_x_api_key = client
        .post(&url, &[("x-api-key", OTHER_KEY)], chat("private", false))
        .await;
    assert_eq!(by_x_api_key.status, 200);
}

#[tokio::test]
async fn errors_follow_the_precedence_401_404_403() {
    let mock = Mock::openai().await;
    let gw = start(&mock);
    let client = Client::new();
    let url = gw.url("/v1/chat/completions");

    let missing = client.post(&url, &[], chat("nope", false)).await;
    assert_eq!(missing.status, 401);
    assert_eq!(
        missing.error(),
        (
            "authentication_error".into(),
            Some("invalid_api_key".into())
        )
    );

    let wrong = client
        .post(
            &url,
            &[("authorization", "Bearer sk-sy-wrong")],
            chat("nope", false),
        )
        .await;
    assert_eq!(wrong.status, 401);
    assert!(
        !wrong.text().contains("sk-sy-wrong"),
        "the key is not echoed"
    );

    let team = bearer(TEAM_KEY);
    let unknown = client
        .post(&url, &[("authorization", &team)], chat("nope", false))
        .await;
    assert_eq!(unknown.status, 404);
    assert_eq!(
        unknown.error(),
        (
            "invalid_request_error".into(),
            Some("model_not_found".into())
        )
    );

    let forbidden = client
        .post(&url, &[("authorization", &team)], chat("private", false))
        .await;
    assert_eq!(forbidden.status, 403);
    assert_eq!(
        forbidden.error(),
        ("permission_error".into(), Some("model_not_allowed".into()))
    );
    assert_eq!(mock.hits(), 0, "nothing reached the backend");
}

#[tokio::test]
async fn models_lists_what_the_key_may_use() {
    let mock = Mock::openai().await;
    let gw = start(&mock);
    let client = Client::new();
    let ids = |reply: &support::Reply| -> Vec<String> {
        let v = reply.json();
        assert_eq!(v["object"], "list");
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                assert_eq!(m["object"], "model");
                assert_eq!(m["owned_by"], "switchyard");
                assert!(m["created"].is_u64());
                m["id"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    let team = client
        .get(
            &gw.url("/v1/models"),
            &[("authorization", &bearer(TEAM_KEY))],
        )
        .await;
    assert_eq!(
        ids(&team),
        ["chat-bearer", "chat-xkey", "chat-custom", "chat-open"]
    );
    let other = client
        .get(
            &gw.url("/v1/models"),
            &[("authorization", &bearer(OTHER_KEY))],
        )
        .await;
    assert_eq!(ids(&other).len(), 5);
    let none = client.get(&gw.url("/v1/models"), &[]).await;
    assert_eq!(none.status, 401);

    let one = client
        .get(
            &gw.url("/v1/models/chat-open"),
            &[("authorization", &bearer(TEAM_KEY))],
        )
        .await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["id"], "chat-open");
    let hidden = client
        .get(
            &gw.url("/v1/models/private"),
            &[("authorization", &bearer(TEAM_KEY))],
        )
        .await;
    assert_eq!(hidden.status, 404);
}

#[tokio::test]
async fn anonymous_access_when_auth_is_not_required() {
    let mock = Mock::openai().await;
    let config = format!(
        "auth: {{required: false}}\nkeys: [{{id: team, sha256: \"{}\"}}]\n\
         providers: {{p: {{type: openai, base_url: \"{}\"}}}}\n\
         models: {{m: {{targets: [{{provider: p}}]}}}}\n",
        digest(TEAM_KEY),
        mock.url("/v1")
    );
    let gw = Gateway::start(&config);
    let client = Client::new();
    let url = gw.url("/v1/chat/completions");
    assert_eq!(client.post(&url, &[], chat("m", false)).await.status, 200);
    assert_eq!(
        client
            .post(
                &url,
                &[("authorization", &bearer(TEAM_KEY))],
                chat("m", false)
            )
            .await
            .status,
        200
    );
    assert_eq!(
        client
            .post(
                &url,
                &[("authorization", "Bearer sk-sy-unknown")],
                chat("m", false)
            )
            .await
            .status,
        401,
        "a key that is not configured is refused even when auth is optional"
    );
    gw.wait_for_metric(
        "switchyard_requests_total{endpoint=\"chat\",key=\"anonymous\",model=\"m\",provider=\"p\",status=\"200\"}",
        1.0,
    )
    .await;
    gw.wait_for_metric(
        "switchyard_requests_total{endpoint=\"chat\",key=\"team\",model=\"m\",provider=\"p\",status=\"200\"}",
        1.0,
    )
    .await;
}
