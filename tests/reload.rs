//! Hot reload: by rewrite, by rename, by SIGHUP; bad files rejected while the
//! running config keeps serving; in-flight requests finish on their snapshot;
//! connection pools of unchanged providers survive.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use support::mock::held_stream;
use support::{Client, Gateway, Mock, chat};
use tokio::sync::Notify;

fn config(mock: &Mock, alias: &str) -> String {
    format!(
        "auth: {{required: false}}\n\
         providers: {{p: {{type: openai, base_url: \"{}\"}}}}\n\
         models:\n  {alias}: {{targets: [{{provider: p, model: backend-{alias}}}]}}\n",
        mock.url("/v1")
    )
}

const OK: &str = "switchyard_config_reloads_total{result=\"ok\"}";
const REJECTED: &str = "switchyard_config_reloads_total{result=\"rejected\"}";

async fn status(gw: &Gateway, model: &str) -> u16 {
    Client::new()
        .post(&gw.url("/v1/chat/completions"), &[], chat(model, false))
        .await
        .status
        .as_u16()
}

#[tokio::test]
async fn a_rewritten_file_is_picked_up() {
    let mock = Mock::openai().await;
    let gw = Gateway::start(&config(&mock, "before"));
    assert_eq!(status(&gw, "before").await, 200);
    let seen = gw.logs().len();
    gw.rewrite_config(&config(&mock, "after"));
    gw.wait_for_log("config reloaded", seen).await;
    assert_eq!(status(&gw, "after").await, 200);
    assert_eq!(status(&gw, "before").await, 404);
    assert_eq!(gw.metric(OK).await, 1.0);
}

#[tokio::test]
async fn a_file_replaced_by_rename_is_picked_up() {
    let mock = Mock::openai().await;
    let gw = Gateway::start(&config(&mock, "before"));
    let seen = gw.logs().len();
    gw.rename_config(&config(&mock, "renamed"));
    gw.wait_for_log("config reloaded", seen).await;
    assert_eq!(status(&gw, "renamed").await, 200);
    // And the watcher still works after the rename.
    let seen = gw.logs().len();
    gw.rename_config(&config(&mock, "again"));
    gw.wait_for_log("config reloaded", seen).await;
    assert_eq!(status(&gw, "again").await, 200);
}

#[tokio::test]
async fn sighup_reloads_even_an_unchanged_file() {
    let mock = Mock::openai().await;
    let gw = Gateway::start(&config(&mock, "same"));
    let seen = gw.logs().len();
    gw.signal("HUP");
    gw.wait_for_log("config reloaded", seen).await;
    gw.wait_for_metric(OK, 1.0).await;
    assert_eq!(status(&gw, "same").await, 200);
}

#[tokio::test]
async fn a_bad_file_is_rejected_and_nothing_fails_meanwhile() {
    let mock = Mock::openai().await;
    let gw = Arc::new(Gateway::start(&config(&mock, "stable")));

    // Traffic runs for the whole test; every request must succeed.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (gw, stop, failures, sent) = (gw.clone(), stop.clone(), failures.clone(), sent.clone());
        workers.push(tokio::spawn(async move {
            let client = Client::new();
            while !stop.load(Ordering::Relaxed) {
                let reply = client
                    .post(&gw.url("/v1/chat/completions"), &[], chat("stable", false))
                    .await;
                sent.fetch_add(1, Ordering::Relaxed);
                if reply.status != 200 {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    let seen = gw.logs().len();
    gw.rewrite_config(&format!(
        "{}  broken: {{targets: [{{provider: lmstudo}}]}}\nunknown_field: 1\n",
        config(&mock, "stable")
    ));
    let line = gw.wait_for_log("config reload rejected", seen).await;
    assert!(
        line.contains("unknown_field") || line.contains("lmstudo"),
        "{line}"
    );
    let problems = gw.logs()[seen..].join("\n");
    assert!(
        problems.contains("models.broken.targets[0].provider: no provider named \\\"lmstudo\\\""),
        "{problems}"
    );
    assert!(problems.contains("unknown_field"), "{problems}");
    assert_eq!(gw.metric(REJECTED).await, 1.0);
    assert_eq!(
        status(&gw, "stable").await,
        200,
        "the old config keeps serving"
    );

    let seen = gw.logs().len();
    gw.rewrite_config(&format!(
        "{}  extra: {{targets: [{{provider: p}}]}}\n",
        config(&mock, "stable")
    ));
    gw.wait_for_log("config reloaded", seen).await;
    assert_eq!(status(&gw, "extra").await, 200);

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert!(sent.load(Ordering::Relaxed) > 0);
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "no request failed during the reloads"
    );
}

#[tokio::test]
async fn a_rejected_file_leaves_no_trace_in_shared_state() {
    let mock = Mock::openai().await;
    let gw = Gateway::start(&config(&mock, "kept"));
    let seen = gw.logs().len();
    // Valid but for one unknown provider: compiling it meets a new target first.
    gw.rewrite_config(&format!(
        "{}  phantom: {{targets: [{{provider: p, model: ghost}}]}}\n  broken: {{targets: [{{provider: lmstudo}}]}}\n",
        config(&mock, "kept")
    ));
    gw.wait_for_log("config reload rejected", seen).await;
    let text = Client::new()
        .get(&gw.admin_url("/metrics"), &[])
        .await
        .text();
    assert!(
        !text.contains("ghost"),
        "a target of a rejected config is not in /metrics"
    );
    assert_eq!(status(&gw, "kept").await, 200);
}

#[tokio::test]
async fn an_empty_file_is_never_installed() {
    // What a watcher sees between an editor's truncate and its write.
    let mock = Mock::openai().await;
    let gw = Gateway::start(&config(&mock, "kept"));
    let seen = gw.logs().len();
    std::fs::write(&gw.config, "\n").unwrap();
    gw.wait_for_log("the file is empty", seen).await;
    assert_eq!(gw.metric(REJECTED).await, 1.0);
    assert_eq!(status(&gw, "kept").await, 200);

    // The write that follows is a change, and is installed.
    let seen = gw.logs().len();
    gw.rewrite_config(&config(&mock, "next"));
    gw.wait_for_log("config reloaded", seen).await;
    assert_eq!(status(&gw, "next").await, 200);
}

#[tokio::test]
async fn in_flight_requests_finish_on_their_snapshot() {
    let release = Arc::new(Notify::new());
    let gate = release.clone();
    let mock = Mock::start(move |_| held_stream("one", &gate, "two")).await;
    let other = Mock::openai().await;
    let gw = Gateway::start(&config(&mock, "old"));
    let mut stream = Client::new()
        .open(&gw.url("/v1/chat/completions"), &[], chat("old", true))
        .await;
    stream.read_until("one").await;

    // The alias and its provider disappear while the stream is open.
    let seen = gw.logs().len();
    gw.rewrite_config(&config(&other, "new"));
    gw.wait_for_log("config reloaded", seen).await;
    assert_eq!(status(&gw, "old").await, 404);

    release.notify_one();
    let rest = stream.rest().await;
    assert!(
        rest.contains("two") && rest.ends_with("data: [DONE]\n\n"),
        "{rest}"
    );
}

#[tokio::test]
async fn pools_of_unchanged_providers_survive_a_reload() {
    let mock = Mock::openai().await;
    let gw = Gateway::start(&config(&mock, "a"));
    assert_eq!(status(&gw, "a").await, 200);
    assert_eq!(mock.connections(), 1);
    let seen = gw.logs().len();
    gw.rewrite_config(&config(&mock, "b"));
    gw.wait_for_log("config reloaded", seen).await;
    assert_eq!(status(&gw, "b").await, 200);
    assert_eq!(status(&gw, "b").await, 200);
    assert_eq!(
        mock.connections(),
        1,
        "the kept-alive connection was reused across the reload"
    );
}
