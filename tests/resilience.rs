//! Retries, fallbacks, balancing, cooldowns, timeouts, concurrency caps and
//! cancellation, against fault-injecting mock backends.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use support::client::streamed_content;
use support::mock::{self, Plan, Step, chunk, done, event};
use support::{Client, Gateway, Mock, chat};
use tokio::sync::Notify;

/// A mock that fails its first `n` requests with `status`, then answers normally.
async fn failing_first(n: usize, status: u16) -> (Mock, Arc<AtomicUsize>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let mock = Mock::start(move |r| {
        if counter.fetch_add(1, Ordering::SeqCst) < n {
            Plan::json(
                status,
                json!({"error": {"message": format!("failure {status}")}}),
            )
        } else {
            mock::openai(r)
        }
    })
    .await;
    (mock, seen)
}

fn providers(list: &[(&str, String)]) -> String {
    let mut s = String::from("providers:\n");
    for (name, url) in list {
        s.push_str(&format!(
            "  {name}: {{type: openai, base_url: \"{url}\"}}\n"
        ));
    }
    s
}

const OPEN: &str = "auth: {required: false}\n";

async fn post(gw: &Gateway, model: &str, stream: bool) -> support::Reply {
    Client::new()
        .post(&gw.url("/v1/chat/completions"), &[], chat(model, stream))
        .await
}

#[tokio::test]
async fn retries_the_configured_statuses_until_one_succeeds() {
    let (mock, _) = failing_first(2, 503).await;
    let config = format!(
        "{OPEN}routing: {{retry: {{attempts: 3, backoff: {{base: 1ms, max: 5ms}}}}}}\n{}models: {{m: {{targets: [{{provider: a}}]}}}}\n",
        providers(&[("a", mock.url("/v1"))])
    );
    let gw = Gateway::start(&config);
    let reply = post(&gw, "m", false).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(mock.hits(), 3);
    assert_eq!(reply.header("x-switchyard-attempts"), Some("3"));
    assert_eq!(
        gw.metric("switchyard_retries_total{provider=\"a\",reason=\"503\"}")
            .await,
        2.0
    );
}

#[tokio::test]
async fn attempts_bound_the_tries_and_the_last_error_is_reported() {
    let (mock, _) = failing_first(100, 503).await;
    let config = format!(
        "{OPEN}routing: {{retry: {{attempts: 2, backoff: {{base: 1ms, max: 5ms}}}}, cooldown: {{after_failures: 100}}}}\n{}models: {{m: {{targets: [{{provider: a}}]}}}}\n",
        providers(&[("a", mock.url("/v1"))])
    );
    let gw = Gateway::start(&config);
    let reply = post(&gw, "m", false).await;
    assert_eq!(reply.status, 502);
    assert!(reply.text().contains("failure 503"), "{}", reply.text());
    assert_eq!(mock.hits(), 2);
}

#[tokio::test]
async fn statuses_not_listed_and_client_errors_are_not_retried() {
    let (mock, _) = failing_first(100, 501).await;
    let config = format!(
        "{OPEN}routing: {{retry: {{attempts: 3, backoff: {{base: 1ms, max: 5ms}}}}}}\n{}models: {{m: {{targets: [{{provider: a}}]}}}}\n",
        providers(&[("a", mock.url("/v1"))])
    );
    let gw = Gateway::start(&config);
    assert_eq!(post(&gw, "m", false).await.status, 502);
    assert_eq!(mock.hits(), 1, "501 is not in retry.on");
    mock.set(|_| Plan::json(400, json!({"error": {"message": "bad prompt"}})));
    assert_eq!(post(&gw, "m", false).await.status, 400);
    assert_eq!(mock.hits(), 2, "a client error is never retried");
}

#[tokio::test]
async fn a_retry_goes_to_another_target() {
    let (bad, _) = failing_first(100, 503).await;
    let good = Mock::openai().await;
    let config = format!(
        "{OPEN}routing: {{retry: {{backoff: {{base: 1ms, max: 5ms}}}}}}\n{}models: {{m: {{targets: [{{provider: bad, weight: 1000}}, {{provider: good, weight: 1}}]}}}}\n",
        providers(&[("bad", bad.url("/v1")), ("good", good.url("/v1"))])
    );
    let gw = Gateway::start(&config);
    for _ in 0..5 {
        let reply = post(&gw, "m", false).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("x-switchyard-provider"), Some("good"));
    }
    assert!(bad.hits() <= 5 && bad.hits() >= 1);
    assert_eq!(good.hits(), 5);
}

#[tokio::test]
async fn refused_connections_are_retried_elsewhere() {
    let good = Mock::openai().await;
    let config = format!(
        "{OPEN}routing: {{retry: {{backoff: {{base: 1ms, max: 5ms}}}}}}\n{}models: {{m: {{targets: [{{provider: dead, weight: 1000}}, {{provider: good, weight: 1}}]}}}}\n",
        providers(&[("dead", support::dead_url()), ("good", good.url("/v1"))])
    );
    let gw = Gateway::start(&config);
    let reply = post(&gw, "m", true).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-switchyard-provider"), Some("good"));
    assert_eq!(
        gw.metric("switchyard_retries_total{provider=\"dead\",reason=\"connect\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_short_retry_after_is_waited_for() {
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let mock = Mock::start(move |r| {
        if counter.fetch_add(1, Ordering::SeqCst) == 0 {
            Plan::json(429, json!({"error": {"message": "slow down"}})).header("retry-after", "0.3")
        } else {
            mock::openai(r)
        }
    })
    .await;
    let config = format!(
        "{OPEN}routing: {{retry: {{backoff: {{base: 1ms, max: 2s}}}}}}\n{}models: {{m: {{targets: [{{provider: a}}]}}}}\n",
        providers(&[("a", mock.url("/v1"))])
    );
    let gw = Gateway::start(&config);
    let started = Instant::now();
    assert_eq!(post(&gw, "m", false).await.status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "retry-after was honoured"
    );
    assert_eq!(mock.hits(), 2);
}

#[tokio::test]
async fn a_long_retry_after_cools_the_target_down() {
    // A quota (429) or maintenance (503) answer that asks for longer than
    // `backoff.max`: the target leaves rotation for that long.
    for status in [429, 503] {
        let limited = Mock::start(move |_| {
            Plan::json(status, json!({"error": {"message": "quota"}})).header("retry-after", "120")
        })
        .await;
        let good = Mock::openai().await;
        let config = format!(
            "{OPEN}routing: {{retry: {{backoff: {{base: 1ms, max: 2s}}}}}}\n{}models: {{m: {{targets: [{{provider: limited, model: x, weight: 1000}}, {{provider: good, model: y, weight: 1}}]}}}}\n",
            providers(&[("limited", limited.url("/v1")), ("good", good.url("/v1"))])
        );
        let gw = Gateway::start(&config);
        assert_eq!(post(&gw, "m", false).await.status, 200, "{status}");
        assert_eq!(limited.hits(), 1, "{status}");
        for _ in 0..5 {
            assert_eq!(
                post(&gw, "m", false).await.header("x-switchyard-provider"),
                Some("good"),
                "{status}"
            );
        }
        assert_eq!(
            limited.hits(),
            1,
            "{status}: the target stays out of rotation"
        );
        assert_eq!(
            gw.metric("switchyard_target_healthy{model=\"x\",provider=\"limited\"}")
                .await,
            0.0,
            "{status}"
        );
        assert_eq!(
            gw.metric("switchyard_target_healthy{model=\"y\",provider=\"good\"}")
                .await,
            1.0,
            "{status}"
        );
    }
}

#[tokio::test]
async fn nothing_is_replayed_after_the_first_byte() {
    let mock = Mock::start(|_| {
        Plan::sse(vec![event(&chunk(
            "m",
            json!({"role": "assistant", "content": "half"}),
            None,
        ))])
    })
    .await;
    let config = format!(
        "{OPEN}routing: {{retry: {{attempts: 3, backoff: {{base: 1ms, max: 5ms}}}}}}\n{}models: {{m: {{targets: [{{provider: a}}]}}}}\n",
        providers(&[("a", mock.url("/v1"))])
    );
    let gw = Gateway::start(&config);
    let reply = post(&gw, "m", true).await;
    assert_eq!(reply.status, 200);
    let events = reply.events();
    assert!(events[0].contains("half"));
    assert!(events[events.len() - 2].contains("\"error\""));
    assert_eq!(
        mock.hits(),
        1,
        "the stream had reached the client: no retry"
    );
}

#[tokio::test]
async fn a_stream_that_fails_before_its_first_event_is_retried() {
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let mock = Mock::start(move |r| {
        if counter.fetch_add(1, Ordering::SeqCst) == 0 {
            Plan::sse(vec![
                event(&json!({"error": {"message": "engine restarting", "code": 500}})),
                done(),
            ])
        } else {
            mock::openai(r)
        }
    })
    .await;
    let config = format!(
        "{OPEN}routing: {{retry: {{backoff: {{base: 1ms, max: 5ms}}}}}}\n{}models: {{m: {{targets: [{{provider: a}}]}}}}\n",
        providers(&[("a", mock.url("/v1"))])
    );
    let gw = Gateway::start(&config);
    let reply = post(&gw, "m", true).await;
    assert_eq!(reply.status, 200);
    assert!(
        !reply.text().contains("engine restarting"),
        "{}",
        reply.text()
    );
    assert!(reply.text().contains("Hello"));
    assert_eq!(mock.hits(), 2);
}

#[tokio::test]
async fn the_budget_stops_a_retry_storm() {
    let (mock, _) = failing_first(usize::MAX, 503).await;
    let config = format!(
        "{OPEN}routing:\n  retry: {{attempts: 5, backoff: {{base: 1ms, max: 1ms}}, budget: {{ratio: 0.1, min_per_second: 1, window: 10s}}}}\n  cooldown: {{after_failures: 100000}}\n{}models: {{m: {{targets: [{{provider: a}}]}}}}\n",
        providers(&[("a", mock.url("/v1"))])
    );
    let gw = Gateway::start(&config);
    let n = 60;
    for _ in 0..n {
        assert_eq!(post(&gw, "m", false).await.status, 502);
    }
    let hits = mock.hits();
    // Without a budget: 60 × 5 = 300 hits. With 10%: 60 + 6 + the reserve.
    assert!(hits >= n, "{hits}");
    assert!(
        hits <= n + 20,
        "the budget let {} retries through",
        hits - n
    );
}

#[tokio::test]
async fn a_failing_target_cools_down_and_comes_back_after_a_probe() {
    let (flaky, _) = failing_first(3, 500).await;
    let good = Mock::openai().await;
    let config = format!(
        "{OPEN}routing:\n  retry: {{attempts: 1}}\n  cooldown: {{after_failures: 3, for: 200ms}}\n{}models: {{m: {{targets: [{{provider: flaky, model: f, weight: 1000}}, {{provider: good, model: g, weight: 1}}]}}}}\n",
        providers(&[("flaky", flaky.url("/v1")), ("good", good.url("/v1"))])
    );
    let gw = Gateway::start(&config);
    let healthy = "switchyard_target_healthy{model=\"f\",provider=\"flaky\"}";
    // The heavy target takes the traffic and fails three times in a row.
    let mut failures = 0;
    while flaky.hits() < 3 {
        if post(&gw, "m", false).await.status != 200 {
            failures += 1;
        }
    }
    assert_eq!(failures, 3);
    assert_eq!(gw.metric(healthy).await, 0.0);
    for _ in 0..5 {
        assert_eq!(
            post(&gw, "m", false).await.header("x-switchyard-provider"),
            Some("good")
        );
    }
    assert_eq!(flaky.hits(), 3, "out of rotation during the cooldown");
    tokio::time::sleep(Duration::from_millis(250)).await;
    // The next request probes it; it answers, so it is back.
    let reply = post(&gw, "m", false).await;
    assert_eq!(reply.header("x-switchyard-provider"), Some("flaky"));
    assert_eq!(gw.metric(healthy).await, 1.0);
}

#[tokio::test]
async fn when_every_target_cools_down_one_still_gets_one_try() {
    let (mock, _) = failing_first(usize::MAX, 503).await;
    let config = format!(
        "{OPEN}routing:\n  retry: {{attempts: 3, backoff: {{base: 1ms, max: 1ms}}}}\n  cooldown: {{after_failures: 1, for: 60s}}\n{}models: {{m: {{targets: [{{provider: a}}]}}}}\n",
        providers(&[("a", mock.url("/v1"))])
    );
    let gw = Gateway::start(&config);
    assert_eq!(post(&gw, "m", false).await.status, 502);
    let after_first = mock.hits();
    assert_eq!(post(&gw, "m", false).await.status, 502);
    assert_eq!(
        mock.hits(),
        after_first + 1,
        "one try, no retries, while all targets cool down"
    );
}

#[tokio::test]
async fn a_slower_target_receives_less_traffic() {
    let fast = Mock::openai().await;
    let slow = Mock::start(|r| {
        let mut plan = mock::openai(r);
        // Far above the scheduling hiccups of a loaded test machine, which a
        // peak-sensitive average would otherwise count against the fast one.
        plan.steps.insert(0, Step::Sleep(Duration::from_millis(40)));
        plan
    })
    .await;
    let config = format!(
        "{OPEN}{}models: {{m: {{targets: [{{provider: fast}}, {{provider: slow}}]}}}}\n",
        providers(&[("fast", fast.url("/v1")), ("slow", slow.url("/v1"))])
    );
    let gw = Gateway::start(&config);
    let n = 120;
    for _ in 0..n {
        assert_eq!(post(&gw, "m", false).await.status, 200);
    }
    let (f, s) = (fast.hits(), slow.hits());
    assert_eq!(f + s, n);
    // Equal weights would give 60 each; the slower one gets about a quarter.
    assert!(s < 45, "slow got {s}, fast {f}");
    assert!(s > 0, "the slow target is still measured");
}

/// One OpenAI provider `a` on `mock` with `timeouts`, behind the alias `m`.
fn stream_config(mock: &Mock, timeouts: &str) -> String {
    format!(
        "{OPEN}providers:\n  a: {{type: openai, base_url: \"{}\", timeouts: {{{timeouts}}}}}\nmodels: {{m: {{targets: [{{provider: a}}]}}}}\n",
        mock.url("/v1")
    )
}

/// The message of the timeout error that ends a relayed stream, after
/// checking its code and that `[DONE]` follows it.
fn timeout_event(events: &[String]) -> String {
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let error: serde_json::Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(error["error"]["code"], "upstream_timeout");
    error["error"]["message"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_stalled_stream_ends_with_an_error_event() {
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
    let gw = Gateway::start(&stream_config(&mock, "stream_idle: 200ms"));
    let mut cut = mock.cut_watch();
    let reply = post(&gw, "m", true).await;
    let events = reply.events();
    assert!(events[0].contains("tick"));
    let message = timeout_event(&events);
    assert!(message.contains("silent"), "{message}");
    tokio::time::timeout(Duration::from_secs(1), cut.wait_for(|n| *n >= 1))
        .await
        .expect("the stalled backend is hung up on")
        .unwrap();
}

/// A backend streaming `chunks` contents `t0 `, `t1 `, … one `every` apart,
/// then a finished chunk and `[DONE]`.
async fn ticking(chunks: usize, every: Duration) -> Mock {
    Mock::start(move |_| {
        let mut steps = Vec::new();
        for n in 0..chunks {
            steps.push(event(&chunk(
                "m",
                json!({"content": format!("t{n} ")}),
                None,
            )));
            steps.push(Step::Sleep(every));
        }
        steps.push(event(&chunk("m", json!({}), Some("stop"))));
        steps.push(done());
        Plan::sse(steps)
    })
    .await
}

#[tokio::test]
async fn a_stream_that_keeps_talking_outlives_its_idle_timeout() {
    // Chunks 60 ms apart for about twice `stream_idle`: no gap is as long
    // as the limit, so the stream must end normally, not be cut when the
    // first idle deadline passes.
    let mock = ticking(8, Duration::from_millis(60)).await;
    let gw = Gateway::start(&stream_config(&mock, "stream_idle: 250ms"));
    let started = Instant::now();
    let reply = post(&gw, "m", true).await;
    assert!(
        started.elapsed() > Duration::from_millis(250),
        "the stream outlasted the limit"
    );
    assert_eq!(
        streamed_content(&reply.chunks()),
        "t0 t1 t2 t3 t4 t5 t6 t7 "
    );
    assert!(!reply.text().contains("silent"), "{}", reply.text());
}

#[tokio::test]
async fn a_stream_that_talks_past_the_total_timeout_is_cut() {
    // Chunks 40 ms apart for about 1.6 s: never idle for `stream_idle`, but
    // longer than `total`, so the stream ends with a timeout event when
    // the request's deadline passes and the backend is hung up on.
    let mock = ticking(40, Duration::from_millis(40)).await;
    let gw = Gateway::start(&stream_config(&mock, "stream_idle: 150ms, total: 400ms"));
    let mut cut = mock.cut_watch();
    let reply = post(&gw, "m", true).await;
    let events = reply.events();
    let content = streamed_content(&reply.chunks());
    assert!(content.starts_with("t0 t1 "), "{content}");
    assert!(!content.contains("t39"), "the stream was cut: {content}");
    let message = timeout_event(&events);
    assert!(message.contains("total timeout"), "{message}");
    tokio::time::timeout(Duration::from_secs(1), cut.wait_for(|n| *n >= 1))
        .await
        .expect("the backend is hung up on")
        .unwrap();
}

#[tokio::test]
async fn a_retry_in_backoff_is_abandoned_when_the_client_leaves() {
    let (mock, _) = failing_first(usize::MAX, 503).await;
    mock.set(|_| {
        Plan::json(503, json!({"error": {"message": "busy"}})).header("retry-after", "0.4")
    });
    let config = format!(
        "{OPEN}routing: {{retry: {{attempts: 3, backoff: {{base: 1ms, max: 2s}}}}}}\n{}models: {{m: {{targets: [{{provider: a}}]}}}}\n",
        providers(&[("a", mock.url("/v1"))])
    );
    let gw = Gateway::start(&config);
    let client = Client::new();
    let url = gw.url("/v1/chat/completions");
    let request = tokio::spawn(async move { client.post(&url, &[], chat("m", false)).await });
    while mock.hits() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    request.abort();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(mock.hits(), 1, "no retry after the client left");
}

#[tokio::test]
async fn fallbacks_serve_when_every_target_failed() {
    let (primary, _) = failing_first(usize::MAX, 503).await;
    let backup = Mock::openai().await;
    let config = format!(
        "{OPEN}routing: {{retry: {{attempts: 2, backoff: {{base: 1ms, max: 1ms}}}}}}\n{}models:\n  main: {{targets: [{{provider: primary}}], fallbacks: [spare]}}\n  spare: {{targets: [{{provider: backup, model: backup-model}}]}}\n",
        providers(&[
            ("primary", primary.url("/v1")),
            ("backup", backup.url("/v1"))
        ])
    );
    let gw = Gateway::start(&config);
    let reply = post(&gw, "main", false).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("x-switchyard-provider"), Some("backup"));
    assert_eq!(reply.header("x-switchyard-model"), Some("backup-model"));
    assert_eq!(
        reply.json()["model"],
        "main",
        "the client still sees its own model name"
    );
    assert_eq!(primary.hits(), 2);
    assert_eq!(
        gw.metric("switchyard_fallbacks_total{from=\"main\",to=\"spare\"}")
            .await,
        1.0
    );

    primary.set(|_| Plan::json(422, json!({"error": {"message": "bad schema"}})));
    let reply = post(&gw, "main", false).await;
    assert_eq!(
        reply.status, 422,
        "a client error ends the request: no fallback"
    );
    assert_eq!(backup.hits(), 1);
}

#[tokio::test]
async fn a_provider_concurrency_cap_queues_then_refuses() {
    let release = Arc::new(Notify::new());
    let gate = release.clone();
    let mock = Mock::start(move |r| {
        let mut plan = mock::openai(r);
        plan.steps.insert(0, Step::Wait(gate.clone()));
        plan
    })
    .await;
    let config = format!(
        "{OPEN}routing: {{retry: {{attempts: 1}}}}\nproviders:\n  small: {{type: openai, base_url: \"{}\", max_concurrent: 1, max_queue: 1}}\nmodels: {{m: {{targets: [{{provider: small}}]}}}}\n",
        mock.url("/v1")
    );
    let gw = Arc::new(Gateway::start(&config));
    let spawn = |gw: Arc<Gateway>| tokio::spawn(async move { post(&gw, "m", false).await });
    let running = spawn(gw.clone());
    while mock.hits() < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let queued = spawn(gw.clone());
    // Wait until the second request is in the queue: the inflight gauge counts only the first.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let refused = post(&gw, "m", false).await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(
        refused.error(),
        ("server_error".into(), Some("overloaded".into()))
    );
    assert!(refused.text().contains("concurrency limit"));
    assert_eq!(
        mock.hits(),
        1,
        "the queued request has not reached the backend"
    );
    release.notify_one();
    assert_eq!(running.await.unwrap().status, 200);
    while mock.hits() < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    release.notify_one();
    assert_eq!(queued.await.unwrap().status, 200);
}

#[tokio::test]
async fn active_health_checks_take_targets_out_and_back() {
    let healthy = Arc::new(AtomicUsize::new(0));
    let flag = healthy.clone();
    let mock = Mock::start(move |r| {
        if r.path == "/health" {
            if flag.load(Ordering::SeqCst) == 1 {
                Plan::json(200, json!({"status": "ok"}))
            } else {
                Plan::json(503, json!({"status": "loading"}))
            }
        } else {
            mock::openai(r)
        }
    })
    .await;
    let config = format!(
        "{OPEN}providers:\n  a: {{type: openai, base_url: \"{}\", health_check: {{path: /health, interval: 50ms}}, headers: {{x-tenant: blue}}}}\nmodels: {{m: {{targets: [{{provider: a, model: x}}]}}}}\n",
        mock.url("/v1")
    );
    let gw = Gateway::start(&config);
    let series = "switchyard_target_healthy{model=\"x\",provider=\"a\"}";
    for _ in 0..500 {
        if gw.metric(series).await == 0.0 && mock.hits() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        gw.metric(series).await,
        0.0,
        "a failing check takes the target out"
    );
    healthy.store(1, Ordering::SeqCst);
    gw.wait_for_metric(series, 1.0).await;
    assert!(
        mock.requests()
            .iter()
            .all(|r| r.method == "GET" && r.path == "/health")
    );
    // A check is a request like any other: the provider's headers go along.
    assert!(mock.requests().iter().all(|r| {
        r.header("x-tenant") == Some("blue")
            && r.header("user-agent")
                .is_some_and(|ua| ua.starts_with("switchyard/"))
    }));
}
