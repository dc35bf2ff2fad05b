//! Rate limits and budgets end to end: headers, 429s, shared state across two
//! gateways through Redis, settlement from streamed usage, concurrency leases,
//! and Redis going away.

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use support::mock::{self, Plan, Step, chunk, done, event};
use support::redis::Redis;
use support::{Client, Gateway, Mock, chat, digest};
use tokio::sync::Notify;

const KEY: &str = "sk-sy-limited-team";
const OTHER: &str = "sk-sy-other-team";

fn auth(key: &str) -> String {
    format!("Bearer {key}")
}

/// A config with one limited key, one unlimited key, and alias `m` on `mock`.
fn config(mock: &Mock, limits: &str, extra: &str) -> String {
    format!(
        "keys:\n  - id: team\n    sha256: \"{}\"\n    limits: {limits}\n  - id: other\n    sha256: \"{}\"\n\
         providers: {{p: {{type: openai, base_url: \"{}\"}}}}\nmodels:\n  m: {{targets: [{{provider: p}}]}}\n{extra}",
        digest(KEY),
        digest(OTHER),
        mock.url("/v1")
    )
}

async fn post(gw: &Gateway, key: &str, body: String) -> support::Reply {
    Client::new()
        .post(
            &gw.url("/v1/chat/completions"),
            &[("authorization", &auth(key))],
            body,
        )
        .await
}

/// Waits until `check` holds for a fresh request (settlement runs after the response).
async fn eventually<F: Fn(&support::Reply) -> bool>(
    gw: &Gateway,
    key: &str,
    body: &str,
    check: F,
) -> support::Reply {
    for _ in 0..300 {
        let reply = post(gw, key, body.to_owned()).await;
        if check(&reply) {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the condition never held");
}

#[tokio::test]
async fn requests_per_minute_with_headers_and_a_clear_429() {
    let mock = Mock::openai().await;
    let gw = Gateway::start(&config(&mock, "{rpm: 3}", ""));
    for i in 0..3 {
        let reply = post(&gw, KEY, chat("m", false)).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("x-ratelimit-limit-requests"), Some("3"));
        assert_eq!(
            reply.header("x-ratelimit-remaining-requests"),
            Some((2 - i).to_string().as_str())
        );
        assert!(reply.header("x-ratelimit-reset-requests").is_some());
        assert!(
            reply.header("x-ratelimit-limit-tokens").is_none(),
            "no tpm limit, no token headers"
        );
    }
    let refused = post(&gw, KEY, chat("m", false)).await;
    assert_eq!(refused.status, 429);
    assert_eq!(
        refused.error(),
        (
            "rate_limit_error".into(),
            Some("rate_limit_exceeded".into())
        )
    );
    let message = refused.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("requests per minute (rpm): limit 3"),
        "{message}"
    );
    assert_eq!(refused.header("retry-after"), Some("20"));
    assert_eq!(refused.header("x-ratelimit-remaining-requests"), Some("0"));
    assert_eq!(
        mock.hits(),
        3,
        "the refused request never reached the backend"
    );
    // Another key is not affected, and carries no rate-limit headers.
    let other = post(&gw, OTHER, chat("m", false)).await;
    assert_eq!(other.status, 200);
    assert!(other.header("x-ratelimit-limit-requests").is_none());
    gw.wait_for_metric(
        "switchyard_rate_limited_total{key=\"team\",limit=\"rpm\"}",
        1.0,
    )
    .await;
}

/// A backend whose usage equals the gateway's up-front estimate, so that
/// settlement changes nothing and token counts are exact.
async fn exact_usage_mock() -> Mock {
    Mock::start(|r| {
        let body = r.json();
        let prompt = body["messages"].to_string().len().div_ceil(4) as u64;
        let completion = body["max_tokens"].as_u64().unwrap_or(0);
        Plan::json(200, json!({"id": "x", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}}))
    })
    .await
}

fn sized(max_tokens: u64) -> String {
    json!({"model": "m", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "Say hello"}]}).to_string()
}

#[tokio::test]
async fn a_request_asking_for_every_token_is_refused_not_let_through() {
    // The estimate is the prompt's tokens plus max_tokens: the largest
    // max_tokens must not wrap it round to a few tokens under the limit.
    let mock = exact_usage_mock().await;
    let gw = Gateway::start(&config(&mock, "{tpm: 100}", ""));
    let refused = post(&gw, KEY, sized(u64::MAX)).await;
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert_eq!(mock.hits(), 0);
    assert_eq!(post(&gw, KEY, sized(10)).await.status, 200);
}

#[tokio::test]
async fn two_gateways_sharing_redis_enforce_one_combined_limit() {
    let Some(redis) = Redis::start() else { return };
    let mock = exact_usage_mock().await;
    let shared = format!("rate_limits: {{store: \"{}\"}}\n", redis.url());
    let a = Arc::new(Gateway::start(&config(&mock, "{rpm: 10}", &shared)));
    let b = Arc::new(Gateway::start(&config(&mock, "{rpm: 10}", &shared)));
    // A burst of 40 requests, 20 on each gateway, all at once.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let gw = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            post(&gw, KEY, sized(1)).await.status.as_u16()
        }));
    }
    let mut accepted = 0;
    for t in tasks {
        accepted += (t.await.unwrap() == 200) as u32;
    }
    // One combined allowance of 10 (a refill of one more takes 6 s).
    assert!((10..=11).contains(&accepted), "accepted {accepted}");

    // Tokens: 100 per minute, each request exactly 20 tokens (prompt 10 + 10).
    let mock = exact_usage_mock().await;
    let a = Gateway::start(&config(&mock, "{tpm: 100}", &shared));
    let b = Gateway::start(&config(&mock, "{tpm: 100}", &shared));
    let body = sized(10);
    let prompt = json!([{"role": "user", "content": "Say hello"}])
        .to_string()
        .len()
        .div_ceil(4);
    assert_eq!(prompt + 10, 20, "the request's estimate");
    let mut accepted = 0;
    for i in 0..12 {
        let gw = if i % 2 == 0 { &a } else { &b };
        accepted += (post(gw, KEY, body.clone()).await.status == 200) as u32;
    }
    // 100 / 20 = 5 requests (a sixth's worth refills in 12 s).
    assert!((5..=6).contains(&accepted), "accepted {accepted}");
}

#[tokio::test]
async fn streamed_usage_settles_the_token_charge() {
    let mock = Mock::start(|r| {
        let body = r.json();
        assert_eq!(
            body["stream_options"]["include_usage"], true,
            "the gateway asks for usage"
        );
        let mut usage = chunk("m", json!({}), None);
        usage["choices"] = json!([]);
        usage["usage"] = json!({"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10});
        Plan::sse(vec![
            event(&chunk(
                "m",
                json!({"role": "assistant", "content": "hi"}),
                None,
            )),
            event(&chunk("m", json!({}), Some("stop"))),
            event(&usage),
            done(),
        ])
    })
    .await;
    let gw = Gateway::start(&config(&mock, "{tpm: 1000}", ""));
    let body = json!({"model": "m", "stream": true, "max_tokens": 500, "messages": [{"role": "user", "content": "Say hello"}]}).to_string();
    let reply = post(&gw, KEY, body.clone()).await;
    assert_eq!(reply.status, 200);
    assert!(
        !reply.text().contains("usage"),
        "the usage chunk the client did not ask for is removed"
    );
    // Charged 510 up front (10 prompt + 500), so 490 remain; settled to the
    // 10 really used. Unsettled, a second such request could not fit (1020 > 1000).
    assert_eq!(reply.header("x-ratelimit-remaining-tokens"), Some("490"));
    let after = eventually(&gw, KEY, &body, |r| r.status == 200).await;
    let remaining: u64 = after
        .header("x-ratelimit-remaining-tokens")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (480..490).contains(&remaining),
        "10 + 510 charged, plus a little refill: {remaining}"
    );
    gw.wait_for_metric(
        "switchyard_tokens_total{key=\"team\",kind=\"completion\",model=\"m\",provider=\"p\"}",
        6.0,
    )
    .await;
}

#[tokio::test]
async fn a_concurrency_slot_is_held_until_the_stream_ends_or_the_client_leaves() {
    let release = Arc::new(Notify::new());
    let gate = release.clone();
    let mock = Mock::start(move |r| {
        if r.json()["messages"][0]["content"] == "hang" {
            return Plan::sse(vec![
                event(&chunk(
                    "m",
                    json!({"role": "assistant", "content": "…"}),
                    None,
                )),
                Step::Hang,
            ]);
        }
        if r.json()["stream"] != true {
            return mock::openai(r);
        }
        Plan::sse(vec![
            event(&chunk(
                "m",
                json!({"role": "assistant", "content": "one"}),
                None,
            )),
            Step::Wait(gate.clone()),
            event(&chunk("m", json!({}), Some("stop"))),
            done(),
        ])
    })
    .await;
    let gw = Gateway::start(&config(&mock, "{max_concurrent: 1}", ""));
    let client = Client::new();
    let bearer = auth(KEY);
    let headers = [("authorization", bearer.as_str())];
    let url = gw.url("/v1/chat/completions");

    let mut first = client.open(&url, &headers, chat("m", true)).await;
    first.read_until("one").await;
    let refused = post(&gw, KEY, chat("m", true)).await;
    assert_eq!(refused.status, 429);
    assert!(
        refused.text().contains("concurrent requests"),
        "{}",
        refused.text()
    );
    release.notify_one();
    first.rest().await;
    eventually(&gw, KEY, &chat("m", false), |r| r.status == 200).await;

    let hang =
        json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hang"}]})
            .to_string();
    let mut stuck = client.open(&url, &headers, hang).await;
    stuck.read_until("…").await;
    assert_eq!(post(&gw, KEY, chat("m", false)).await.status, 429);
    drop(stuck);
    eventually(&gw, KEY, &chat("m", false), |r| r.status == 200).await;
    gw.wait_for_metric(
        "switchyard_rate_limited_total{key=\"team\",limit=\"concurrency\"}",
        2.0,
    )
    .await;
}

#[tokio::test]
async fn alias_limits_apply_whoever_calls() {
    let mock = Mock::openai().await;
    let config = format!(
        "keys:\n  - {{id: team, sha256: \"{}\"}}\n  - {{id: other, sha256: \"{}\"}}\n\
         providers: {{p: {{type: openai, base_url: \"{}\"}}}}\nmodels:\n  m: {{targets: [{{provider: p}}], limits: {{rpm: 2}}}}\n",
        digest(KEY),
        digest(OTHER),
        mock.url("/v1")
    );
    let gw = Gateway::start(&config);
    assert_eq!(post(&gw, KEY, chat("m", false)).await.status, 200);
    assert_eq!(post(&gw, OTHER, chat("m", false)).await.status, 200);
    let refused = post(&gw, KEY, chat("m", false)).await;
    assert_eq!(refused.status, 429);
    assert!(refused.text().contains("model m"), "{}", refused.text());
    gw.wait_for_metric(
        "switchyard_rate_limited_total{key=\"team\",limit=\"alias_rpm\"}",
        1.0,
    )
    .await;
}

#[tokio::test]
async fn a_spent_budget_is_refused_with_when_it_resets() {
    let mock = exact_usage_mock().await;
    let gw = Gateway::start(&format!(
        "keys:\n  - id: team\n    sha256: \"{}\"\n    budgets: [{{period: day, tokens: 40}}]\n\
         providers: {{p: {{type: openai, base_url: \"{}\"}}}}\nmodels: {{m: {{targets: [{{provider: p}}]}}}}\n",
        digest(KEY),
        mock.url("/v1")
    ));
    // 20 tokens each: the first two pass (0, then 20 spent), the third finds 40 ≥ 40.
    assert_eq!(post(&gw, KEY, sized(10)).await.status, 200);
    let refused = eventually(&gw, KEY, &sized(10), |r| r.status == 429).await;
    let message = refused.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("day budget of key team (40 tokens per day) is spent; it resets at"),
        "{message}"
    );
    assert!(message.ends_with("00:00:00 GMT."), "{message}");
    assert!(refused.header("retry-after").is_some());
    assert_eq!(mock.hits(), 2);
    gw.wait_for_metric(
        "switchyard_rate_limited_total{key=\"team\",limit=\"budget\"}",
        1.0,
    )
    .await;
}

#[tokio::test]
async fn redis_going_away_fails_open_then_limits_return() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let mock = Mock::openai().await;
    let store = format!("rate_limits: {{store: \"{}\"}}\n", redis.url());
    let gw = Gateway::start(&config(&mock, "{rpm: 3}", &store));
    for _ in 0..3 {
        assert_eq!(post(&gw, KEY, chat("m", false)).await.status, 200);
    }
    assert_eq!(post(&gw, KEY, chat("m", false)).await.status, 429);

    redis.kill();
    for _ in 0..5 {
        let reply = post(&gw, KEY, chat("m", false)).await;
        assert_eq!(
            reply.status, 200,
            "open: requests pass while the store is down"
        );
        assert!(reply.header("x-ratelimit-limit-requests").is_none());
    }
    assert!(
        gw.metric("switchyard_rate_limit_store_errors_total{store=\"redis\"}")
            .await
            >= 5.0
    );
    gw.wait_for_log("the rate limit store is unavailable", 0)
        .await;

    // Redis comes back empty: the gateway reconnects and limits hold again.
    redis.restart();
    let mut refused = false;
    for _ in 0..400 {
        if post(&gw, KEY, chat("m", false)).await.status == 429 {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "limits hold again after Redis returns");
}

#[tokio::test]
async fn a_settlement_the_store_misses_is_counted_and_logged() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let release = Arc::new(Notify::new());
    let gate = release.clone();
    let mock = Mock::start(move |_| mock::held_stream("one", &gate, "two")).await;
    let store = format!("rate_limits: {{store: \"{}\"}}\n", redis.url());
    let gw = Gateway::start(&config(&mock, "{max_concurrent: 2}", &store));
    let mut stream = Client::new()
        .open(
            &gw.url("/v1/chat/completions"),
            &[("authorization", &auth(KEY))],
            chat("m", true),
        )
        .await;
    stream.read_until("one").await;

    // The store goes away while the stream runs: its lease cannot be released.
    redis.kill();
    release.notify_one();
    stream.rest().await;
    gw.wait_for_log("could not settle a request's rate limits", 0)
        .await;
    assert!(
        gw.metric("switchyard_rate_limit_store_errors_total{store=\"redis\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn a_closed_policy_refuses_while_redis_is_down() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let mock = Mock::openai().await;
    let store = format!(
        "rate_limits: {{store: \"{}\", on_store_error: closed}}\n",
        redis.url()
    );
    let gw = Gateway::start(&config(&mock, "{rpm: 100}", &store));
    assert_eq!(post(&gw, KEY, chat("m", false)).await.status, 200);
    redis.kill();
    let reply = post(&gw, KEY, chat("m", false)).await;
    assert_eq!(reply.status, 503);
    assert_eq!(
        reply.error().1.as_deref(),
        Some("rate_limit_store_unavailable")
    );
    // A key without limits does not need the store.
    assert_eq!(post(&gw, OTHER, chat("m", false)).await.status, 200);
}

#[tokio::test]
async fn limits_survive_a_reload_that_keeps_them() {
    let mock = Mock::openai().await;
    let gw = Gateway::start(&config(&mock, "{rpm: 2}", ""));
    assert_eq!(post(&gw, KEY, chat("m", false)).await.status, 200);
    assert_eq!(post(&gw, KEY, chat("m", false)).await.status, 200);
    let seen = gw.logs().len();
    gw.rewrite_config(&config(
        &mock,
        "{rpm: 2}",
        "  n: {targets: [{provider: p}]}\n",
    ));
    gw.wait_for_log("config reloaded", seen).await;
    assert_eq!(
        post(&gw, KEY, chat("n", false)).await.status,
        429,
        "the counter was kept"
    );
}
