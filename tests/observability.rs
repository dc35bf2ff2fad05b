//! Metrics after known traffic, label cardinality, access logs and spans,
//! bodies kept out of logs, readiness.

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use support::mock::{Plan, Step, chunk, done, event};
use support::{Client, Gateway, Mock, chat, metric_value};
use tokio::sync::Notify;

fn config(mock: &Mock) -> String {
    format!(
        "auth: {{required: false}}\nproviders: {{p: {{type: openai, base_url: \"{}\"}}}}\nmodels: {{m: {{targets: [{{provider: p, model: backend}}]}}}}\n",
        mock.url("/v1")
    )
}

async fn metrics_text(gw: &Gateway) -> String {
    Client::new()
        .get(&gw.admin_url("/metrics"), &[])
        .await
        .text()
}

#[tokio::test]
async fn metric_values_follow_known_traffic() {
    let mock = Mock::openai().await;
    let gw = Gateway::start(&config(&mock));
    let client = Client::new();
    for _ in 0..5 {
        assert_eq!(
            client
                .post(&gw.url("/v1/chat/completions"), &[], chat("m", false))
                .await
                .status,
            200
        );
    }
    for _ in 0..3 {
        let body =
            json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "x"}]})
                .to_string();
        assert_eq!(
            client
                .post(&gw.url("/v1/chat/completions"), &[], body)
                .await
                .status,
            200
        );
    }
    assert_eq!(
        client
            .post(&gw.url("/v1/chat/completions"), &[], chat("nope", false))
            .await
            .status,
        404
    );

    let ok = "switchyard_requests_total{endpoint=\"chat\",key=\"anonymous\",model=\"m\",provider=\"p\",status=\"200\"}";
    gw.wait_for_metric(ok, 8.0).await;
    let text = metrics_text(&gw).await;
    assert_eq!(metric_value(&text, ok), 8.0);
    assert_eq!(
        metric_value(
            &text,
            "switchyard_requests_total{endpoint=\"chat\",key=\"anonymous\",model=\"unknown\",provider=\"none\",status=\"404\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &text,
            "switchyard_request_duration_seconds_count{endpoint=\"chat\",model=\"m\",provider=\"p\"}"
        ),
        8.0
    );
    // Every answer of the mock reports 5 prompt and 2 completion tokens (streams included).
    assert_eq!(
        metric_value(
            &text,
            "switchyard_tokens_total{key=\"anonymous\",kind=\"prompt\",model=\"m\",provider=\"p\"}"
        ),
        40.0
    );
    assert_eq!(
        metric_value(
            &text,
            "switchyard_tokens_total{key=\"anonymous\",kind=\"completion\",model=\"m\",provider=\"p\"}"
        ),
        16.0
    );
    assert_eq!(
        metric_value(
            &text,
            "switchyard_time_to_first_token_seconds_count{model=\"m\",provider=\"p\"}"
        ),
        8.0
    );
    assert_eq!(
        metric_value(
            &text,
            "switchyard_upstream_duration_seconds_count{provider=\"p\",status=\"200\"}"
        ),
        8.0
    );
    // Each request's time covers its backend's: a whole answer's duration
    // is read when its one frame is handed over, a stream's at its end.
    let request_sum = metric_value(
        &text,
        "switchyard_request_duration_seconds_sum{endpoint=\"chat\",model=\"m\",provider=\"p\"}",
    );
    let upstream_sum = metric_value(
        &text,
        "switchyard_upstream_duration_seconds_sum{provider=\"p\",status=\"200\"}",
    );
    assert!(
        upstream_sum > 0.0 && request_sum >= upstream_sum,
        "request {request_sum} s, upstream {upstream_sum} s"
    );
    assert_eq!(
        metric_value(&text, "switchyard_inflight_requests{provider=\"p\"}"),
        0.0
    );
    // Every access line reached the log's reader: none were dropped.
    assert!(
        text.contains("\nswitchyard_log_lines_dropped_total 0\n"),
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            "switchyard_target_healthy{model=\"backend\",provider=\"p\"}"
        ),
        1.0
    );
    // Buckets fit LLM traffic: 5 ms to 60 s for first tokens, up to 10 min for requests.
    assert!(text.contains(
        "switchyard_time_to_first_token_seconds_bucket{model=\"m\",provider=\"p\",le=\"0.005\"}"
    ));
    assert!(text.contains(
        "switchyard_time_to_first_token_seconds_bucket{model=\"m\",provider=\"p\",le=\"60\"}"
    ));
    assert!(text.contains("switchyard_request_duration_seconds_bucket{endpoint=\"chat\",model=\"m\",provider=\"p\",le=\"600\"}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_model_names_add_no_series() {
    let mock = Mock::openai().await;
    let gw = Arc::new(Gateway::start(&config(&mock)));
    let series = |text: &str| text.lines().filter(|l| !l.starts_with('#')).count();
    // One unknown model first, so the `unknown` series exist.
    Client::new()
        .post(
            &gw.url("/v1/chat/completions"),
            &[],
            chat("first-unknown", false),
        )
        .await;
    let before = series(&metrics_text(&gw).await);
    let mut tasks = Vec::new();
    for t in 0..8 {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move {
            let client = Client::new();
            for i in 0..1250 {
                let model = format!("model-{t}-{i}-{:x}", fastrand::u64(..));
                let reply = client
                    .post(&gw.url("/v1/chat/completions"), &[], chat(&model, false))
                    .await;
                assert_eq!(reply.status, 404);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let text = metrics_text(&gw).await;
    assert_eq!(
        series(&text),
        before,
        "10,000 unknown model names added series"
    );
    assert_eq!(
        metric_value(
            &text,
            "switchyard_requests_total{endpoint=\"chat\",key=\"anonymous\",model=\"unknown\",provider=\"none\",status=\"404\"}"
        ),
        10_001.0
    );
}

#[tokio::test]
async fn time_to_first_token_counts_from_the_first_content_not_the_role_chunk() {
    let release = Arc::new(Notify::new());
    let gate = release.clone();
    let mock = Mock::start(move |_| {
        Plan::sse(vec![
            event(&chunk(
                "b",
                json!({"role": "assistant", "content": ""}),
                None,
            )),
            Step::Wait(gate.clone()),
            event(&chunk("b", json!({"content": "late"}), None)),
            event(&chunk("b", json!({}), Some("stop"))),
            done(),
        ])
    })
    .await;
    let gw = Gateway::start(&config(&mock));
    let mut stream = Client::new()
        .open(&gw.url("/v1/chat/completions"), &[], chat("m", true))
        .await;
    stream.read_until("assistant").await;
    tokio::time::sleep(Duration::from_millis(120)).await;
    release.notify_one();
    stream.rest().await;
    let count = "switchyard_time_to_first_token_seconds_count{model=\"m\",provider=\"p\"}";
    gw.wait_for_metric(count, 1.0).await;
    let text = metrics_text(&gw).await;
    assert_eq!(
        metric_value(
            &text,
            "switchyard_time_to_first_token_seconds_bucket{model=\"m\",provider=\"p\",le=\"0.1\"}"
        ),
        0.0,
        "the role chunk arrived at once; the first token 120 ms later"
    );
    let line = gw
        .wait_for_log("\"target\":\"switchyard::access\"", 0)
        .await;
    let v: Value = serde_json::from_str(&line).unwrap();
    assert!(v["ttft_ms"].as_f64().unwrap() >= 120.0, "{line}");
}

#[tokio::test]
async fn the_access_line_has_the_fields_and_never_the_prompt() {
    let mock = Mock::start(|_| {
        Plan::json(200, json!({"id": "x", "object": "chat.completion", "created": 1, "model": "b",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "SECRET-COMPLETION"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}))
    })
    .await;
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "SECRET-PROMPT"}]})
        .to_string();
    let gw = Gateway::start(&config(&mock));
    Client::new()
        .post(
            &gw.url("/v1/chat/completions"),
            &[("x-request-id", "trace-me")],
            body.clone(),
        )
        .await;
    let line = gw
        .wait_for_log("\"target\":\"switchyard::access\"", 0)
        .await;
    let v: Value = serde_json::from_str(&line).unwrap();
    for (field, expected) in [
        ("request_id", json!("trace-me")),
        ("key", json!("anonymous")),
        ("model", json!("m")),
        ("provider", json!("p")),
        ("backend_model", json!("backend")),
        ("status", json!(200)),
        ("stream", json!(false)),
        ("prompt_tokens", json!(3)),
        ("completion_tokens", json!(4)),
        ("attempts", json!(1)),
    ] {
        assert_eq!(v[field], expected, "{field} in {line}");
    }
    assert!(
        v["latency_ms"].is_number() && v["ttft_ms"].is_number(),
        "{line}"
    );
    let logs = gw.logs().join("\n");
    assert!(
        !logs.contains("SECRET-PROMPT") && !logs.contains("SECRET-COMPLETION"),
        "{logs}"
    );

    // With log.bodies on, both appear, on their own target.
    let gw = Gateway::start(
        &format!(
            "log: {{level: info, format: json, bodies: true}}\n{}",
            config(&mock)
        )
        .replace(support::PREAMBLE, ""),
    );
    Client::new()
        .post(&gw.url("/v1/chat/completions"), &[], body)
        .await;
    gw.wait_for_log("SECRET-COMPLETION", 0).await;
    let logs = gw.logs().join("\n");
    assert!(
        logs.contains("SECRET-PROMPT") && logs.contains("switchyard::bodies"),
        "{logs}"
    );
}

#[tokio::test]
async fn logs_inside_a_request_carry_its_span() {
    let failing = Mock::start(|_| Plan::json(503, json!({"error": {"message": "busy"}}))).await;
    let gw = Gateway::start(&format!(
        "auth: {{required: false}}\nrouting: {{retry: {{attempts: 1}}, cooldown: {{after_failures: 1}}}}\n\
         providers: {{p: {{type: openai, base_url: \"{}\"}}}}\nmodels: {{m: {{targets: [{{provider: p, model: b}}]}}}}\n",
        failing.url("/v1")
    ));
    Client::new()
        .post(
            &gw.url("/v1/chat/completions"),
            &[("x-request-id", "span-me")],
            chat("m", false),
        )
        .await;
    let line = gw.wait_for_log("target out of rotation", 0).await;
    let v: Value = serde_json::from_str(&line).unwrap();
    let spans = v["spans"].as_array().expect("span list");
    assert_eq!(spans[0]["name"], "request");
    assert_eq!(spans[0]["request_id"], "span-me");
    assert_eq!(spans[0]["model"], "m");
    assert_eq!(spans[1]["name"], "attempt");
    assert_eq!(spans[1]["provider"], "p");
    assert_eq!(spans[1]["attempt"], 1);
}

#[tokio::test]
async fn readiness_follows_targets_and_shutdown() {
    let mock = Mock::start(|_| Plan::json(503, json!({"error": {"message": "down"}}))).await;
    // A weight-0 target is out of rotation: it does not make the replica ready.
    let gw = Gateway::start(&format!(
        "auth: {{required: false}}\nrouting: {{retry: {{attempts: 1}}, cooldown: {{after_failures: 1, for: 60s}}}}\n{}",
        config(&mock)
            .replace("auth: {required: false}\n", "")
            .replace(
                "model: backend}]}",
                "model: backend}, {provider: p, model: spare, weight: 0}]}"
            )
    ));
    let client = Client::new();
    assert_eq!(client.get(&gw.admin_url("/readyz"), &[]).await.status, 200);
    client
        .post(&gw.url("/v1/chat/completions"), &[], chat("m", false))
        .await;
    let ready = client.get(&gw.admin_url("/readyz"), &[]).await;
    assert_eq!(ready.status, 503, "the only target is cooling down");
    assert_eq!(ready.json()["status"], "no healthy target");
    assert_eq!(client.get(&gw.admin_url("/healthz"), &[]).await.status, 200);
}

#[tokio::test]
async fn sigterm_turns_readiness_off_while_streams_drain() {
    let release = Arc::new(Notify::new());
    let gate = release.clone();
    let mock = Mock::start(move |_| {
        Plan::sse(vec![
            event(&chunk(
                "b",
                json!({"role": "assistant", "content": "draining"}),
                None,
            )),
            Step::Wait(gate.clone()),
            event(&chunk("b", json!({}), Some("stop"))),
            done(),
        ])
    })
    .await;
    let mut gw = Gateway::start(&config(&mock));
    let client = Client::new();
    let mut stream = client
        .open(&gw.url("/v1/chat/completions"), &[], chat("m", true))
        .await;
    stream.read_until("draining").await;
    gw.signal("TERM");
    let mut not_ready = false;
    for _ in 0..500 {
        if client.get(&gw.admin_url("/readyz"), &[]).await.status == 503 {
            not_ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(not_ready, "readiness turns off at SIGTERM");
    assert!(gw.is_running(), "the stream is still draining");
    release.notify_one();
    assert!(
        stream.rest().await.ends_with("data: [DONE]\n\n"),
        "the in-flight stream finished"
    );
    assert!(gw.wait_exit().expect("exits after draining").success());
}
