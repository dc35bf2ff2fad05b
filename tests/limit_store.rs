//! The limit stores' behaviour, the same for memory and Redis: GCRA without
//! window edges, leases, budgets and their reset, settlement. The clock is
//! injected; nothing sleeps.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use support::redis::Redis;
use switchyard::auth::Caller;
use switchyard::call::Call;
use switchyard::limits::{Charge, Engine, ManualClock, Rule, RuleKind, Store, Stores};
use switchyard::openai::{Endpoint, RequestView, Usage, json_string};
use switchyard::registry::Shared;

/// Runs `test` against a memory store and, when redis-server is installed, a Redis store.
async fn for_each_store<F, Fut>(test: F)
where
    F: Fn(&'static str, Arc<Store>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let stores = Stores::default();
    test("memory", stores.get("memory", "").unwrap()).await;
    if let Some(redis) = Redis::start() {
        let prefix = format!("t{}:", fastrand::u32(..));
        test("redis", stores.get(&redis.url(), &prefix).unwrap()).await;
    }
}

fn rate(key: &str, limit: u64, cost: u64) -> Rule {
    Rule {
        key: key.into(),
        kind: RuleKind::Rate {
            limit,
            period_ms: 60_000,
            cost,
        },
    }
}

async fn admitted(store: &Store, now: u64, rules: &[Rule]) -> bool {
    store.check(now, rules).await.unwrap().denied.is_none()
}

#[tokio::test]
async fn a_burst_spends_the_minute_then_it_refills_smoothly() {
    for_each_store(|name, store| async move {
        let t0 = 1_800_000_000_000;
        let mut accepted = 0;
        for _ in 0..25 {
            accepted += admitted(&store, t0, &[rate("k:rpm", 10, 1)]).await as u32;
        }
        assert_eq!(accepted, 10, "{name}");
        let v = store.check(t0, &[rate("k:rpm", 10, 1)]).await.unwrap();
        assert_eq!(v.states[0].retry_after_ms, Some(6_000), "{name}");
        assert!(
            admitted(&store, t0 + 6_000, &[rate("k:rpm", 10, 1)]).await,
            "{name}"
        );
        assert!(
            !admitted(&store, t0 + 6_000, &[rate("k:rpm", 10, 1)]).await,
            "{name}"
        );
    })
    .await;
}

#[tokio::test]
async fn there_is_no_double_burst_across_a_minute_boundary() {
    for_each_store(|name, store| async move {
        // Just before and just after a minute boundary: a fixed window would
        // let 20 through within 200 ms; a smooth limit lets 10.
        let before = 1_800_000_039_900;
        let after = before + 200;
        let mut accepted = 0;
        for now in [before, after] {
            for _ in 0..10 {
                accepted += admitted(&store, now, &[rate("edge:rpm", 10, 1)]).await as u32;
            }
        }
        assert_eq!(accepted, 10, "{name}");
    })
    .await;
}

#[tokio::test]
async fn arrival_order_not_clock_order_decides_the_last_unit() {
    for_each_store(|name, store| async move {
        // Nine arrive with a clock of t0; the tenth read its clock a
        // millisecond earlier (before a wait, or on a replica whose clock is
        // behind) but arrives last. It is the tenth of ten, and passes.
        let t0 = 1_800_000_000_000;
        for _ in 0..9 {
            assert!(
                admitted(&store, t0, &[rate("late:rpm", 10, 1)]).await,
                "{name}"
            );
        }
        assert!(
            admitted(&store, t0 - 1, &[rate("late:rpm", 10, 1)]).await,
            "{name}"
        );
        assert!(
            !admitted(&store, t0 - 1, &[rate("late:rpm", 10, 1)]).await,
            "{name}: the eleventh does not"
        );
        // Settlement keeps the later clock too: a refund of one unit frees one.
        store
            .settle(
                t0 - 5,
                &[Charge::Adjust {
                    key: "late:rpm".into(),
                    limit: 10,
                    period_ms: 60_000,
                    delta: -1,
                }],
            )
            .await
            .unwrap();
        assert!(
            admitted(&store, t0, &[rate("late:rpm", 10, 1)]).await,
            "{name}"
        );
        assert!(
            !admitted(&store, t0, &[rate("late:rpm", 10, 1)]).await,
            "{name}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_denied_admission_charges_nothing() {
    for_each_store(|name, store| async move {
        let rules = [rate("a:rpm", 100, 1), rate("b:rpm", 1, 1)];
        assert!(admitted(&store, 0, &rules).await);
        assert!(!admitted(&store, 0, &rules).await, "{name}");
        let v = store.check(0, &[rate("a:rpm", 100, 1)]).await.unwrap();
        assert_eq!(
            v.states[0].remaining, 98,
            "{name}: the denied check left a alone"
        );
    })
    .await;
}

#[tokio::test]
async fn settlement_refunds_and_charges_tokens() {
    for_each_store(|name, store| async move {
        let now = 1_000_000;
        assert!(admitted(&store, now, &[rate("t:tpm", 1000, 600)]).await);
        assert!(
            !admitted(&store, now, &[rate("t:tpm", 1000, 600)]).await,
            "{name}"
        );
        // The request used 100 tokens, not 600.
        let refund = Charge::Adjust {
            key: "t:tpm".into(),
            limit: 1000,
            period_ms: 60_000,
            delta: -500,
        };
        store.settle(now, &[refund]).await.unwrap();
        let v = store.check(now, &[rate("t:tpm", 1000, 600)]).await.unwrap();
        assert_eq!(v.denied, None, "{name}");
        assert_eq!(v.states[0].remaining, 300, "{name}");
    })
    .await;
}

#[tokio::test]
async fn leases_are_released_and_expire() {
    for_each_store(|name, store| async move {
        let now = 5_000_000;
        let lease = |id: u64, until: u64| Rule {
            key: "c:concurrency".into(),
            kind: RuleKind::Concurrency {
                limit: 2,
                lease: id,
                until_ms: until,
            },
        };
        assert!(admitted(&store, now, &[lease(1, now + 60_000)]).await);
        assert!(admitted(&store, now, &[lease(2, now + 1_000)]).await);
        assert!(
            !admitted(&store, now, &[lease(3, now + 60_000)]).await,
            "{name}: two in flight"
        );
        store
            .settle(
                now,
                &[Charge::Release {
                    key: "c:concurrency".into(),
                    lease: 1,
                }],
            )
            .await
            .unwrap();
        assert!(
            admitted(&store, now, &[lease(4, now + 60_000)]).await,
            "{name}: released"
        );
        assert!(
            !admitted(&store, now, &[lease(5, now + 60_000)]).await,
            "{name}"
        );
        // Lease 2 expires on its own (its holder died).
        assert!(
            admitted(&store, now + 1_001, &[lease(6, now + 60_000)]).await,
            "{name}: expired"
        );
    })
    .await;
}

// === the engine: keys, budgets and the calendar ===

const KEY: &str = "sk-sy-budget-test";

fn call(snapshot: Arc<switchyard::registry::Snapshot>, body: &str) -> Call {
    let caller = snapshot.keys.authenticate(&{
        let mut h = http::HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {KEY}")).unwrap(),
        );
        h
    });
    let caller = match caller.unwrap() {
        Caller::Key(k) => Caller::Key(k),
        Caller::Anonymous => panic!("the key is configured"),
    };
    let view = RequestView::parse(Endpoint::Chat, body.as_bytes()).unwrap();
    Call {
        route: snapshot.aliases.resolve(&view.model).unwrap(),
        model_json: json_string(&view.model),
        snapshot,
        request_id: HeaderValue::from_static("r"),
        endpoint: Endpoint::Chat,
        caller,
        body: Bytes::copy_from_slice(body.as_bytes()),
        view,
        started: tokio::time::Instant::now(),
        attempts: Default::default(),
        outcome: Default::default(),
    }
}

#[tokio::test]
async fn a_daily_budget_is_spent_and_resets_at_midnight_utc() {
    let redis = Redis::start();
    let mut stores = vec!["memory".to_owned()];
    if let Some(r) = &redis {
        stores.push(r.url());
    }
    for store in stores {
        // 2026-11-25T23:59:00Z
        let clock = Arc::new(ManualClock::at(1_795_651_140_000));
        let shared = Shared::with_clock(clock.clone());
        let config = format!(
            "keys:\n  - id: team\n    sha256: \"{}\"\n    budgets: [{{period: day, tokens: 30}}]\n\
             providers: {{d: {{type: demo}}}}\nmodels: {{m: {{targets: [{{provider: d}}]}}}}\n\
             rate_limits: {{store: \"{store}\", prefix: \"b{}:\"}}\n",
            support::digest(KEY),
            fastrand::u32(..)
        );
        let snapshot =
            Arc::new(switchyard::config::load::load_str(&config, &|_| None, &shared).unwrap());
        let engine: &Engine = &shared.limits;
        let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
        for _ in 0..2 {
            let ticket = engine
                .admit(&call(snapshot.clone(), body))
                .await
                .expect("within budget");
            // The memory store settles at once; Redis in the background.
            if let Some(settled) = ticket.settle(Some(Usage::new(5, 15))) {
                settled.await.unwrap();
            }
        }
        let refused = engine
            .admit(&call(snapshot.clone(), body))
            .await
            .unwrap_err();
        assert_eq!(refused.status(), 429, "{store}");
        assert!(
            refused
                .message
                .contains("day budget of key team (30 tokens per day) is spent"),
            "{}",
            refused.message
        );
        assert!(
            refused
                .message
                .contains("resets at Thu, 26 Nov 2026 00:00:00 GMT"),
            "{}",
            refused.message
        );
        assert_eq!(refused.retry_after, Some(Duration::from_secs(60)));
        // A minute later it is a new day.
        clock.advance(Duration::from_secs(61));
        assert!(
            engine.admit(&call(snapshot.clone(), body)).await.is_ok(),
            "{store}"
        );
    }
}

#[tokio::test]
async fn cost_budgets_count_the_aliases_prices() {
    let clock = Arc::new(ManualClock::at(1_795_651_140_000));
    let shared = Shared::with_clock(clock);
    let config = format!(
        "keys:\n  - id: team\n    sha256: \"{}\"\n    budgets: [{{period: month, cost: 0.002}}]\n\
         providers: {{d: {{type: demo}}}}\nmodels: {{m: {{targets: [{{provider: d}}], price: {{prompt: 10, completion: 30}}}}}}\n",
        support::digest(KEY)
    );
    let snapshot =
        Arc::new(switchyard::config::load::load_str(&config, &|_| None, &shared).unwrap());
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    // 50 prompt tokens at $10/M plus 50 completion tokens at $30/M = $0.002.
    let ticket = shared
        .limits
        .admit(&call(snapshot.clone(), body))
        .await
        .unwrap();
    // The memory store settles at once.
    assert!(ticket.settle(Some(Usage::new(50, 50))).is_none());
    let refused = shared
        .limits
        .admit(&call(snapshot, body))
        .await
        .unwrap_err();
    assert!(
        refused
            .message
            .contains("month budget of key team (a cost of 0.002 per month)"),
        "{}",
        refused.message
    );
}
