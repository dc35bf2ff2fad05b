//! Model discovery: wildcard aliases list what their backends serve.

mod support;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;
use support::mock::Plan;
use support::{Client, Gateway, Mock, TempDir, digest};

async fn ids(gw: &Gateway, headers: &[(&str, &str)]) -> Vec<String> {
    let v = Client::new()
        .get(&gw.url("/v1/models"), headers)
        .await
        .json();
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn wait_for(gw: &Gateway, id: &str) -> Vec<String> {
    for _ in 0..500 {
        let list = ids(gw, &[]).await;
        if list.iter().any(|m| m == id) {
            return list;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{id} never listed; got {:?}", ids(gw, &[]).await);
}

#[tokio::test]
async fn wildcard_aliases_list_discovered_models_and_keep_them_when_the_backend_is_down() {
    let state = Arc::new(AtomicUsize::new(0));
    let s = state.clone();
    let vllm = Mock::start(move |r| match (r.path.as_str(), s.load(Ordering::SeqCst)) {
        ("/v1/models", 0) => Plan::json(
            200,
            json!({"object": "list", "data": [
            {"id": "meta-llama/Llama-3.1-8B-Instruct", "object": "model", "owned_by": "vllm"}]}),
        ),
        ("/v1/models", 1) => Plan::json(
            200,
            json!({"object": "list", "data": [
            {"id": "meta-llama/Llama-3.1-8B-Instruct"}, {"id": "Qwen/Qwen2.5-7B"}]}),
        ),
        _ => Plan::json(500, json!({"error": {"message": "down"}})),
    })
    .await;
    let ollama = Mock::start(|r| {
        assert_eq!(r.path, "/api/tags");
        Plan::json(
            200,
            json!({"models": [{"name": "llama3.2:latest", "model": "llama3.2:latest", "size": 1}]}),
        )
    })
    .await;
    let config = format!(
        "auth: {{required: false}}\n\
         keys: [{{id: limited, sha256: \"{}\", models: [\"vllm/meta-llama/*\"]}}]\n\
         providers:\n\
         \x20 vllm: {{type: openai, base_url: \"{}\", discover: {{interval: 50ms}}}}\n\
         \x20 ollama: {{type: ollama, base_url: \"{}\", discover: true}}\n\
         models:\n\
         \x20 \"vllm/*\": {{targets: [{{provider: vllm}}]}}\n\
         \x20 \"ollama/*\": {{targets: [{{provider: ollama}}]}}\n\
         \x20 plain: {{targets: [{{provider: vllm, model: x}}]}}\n",
        digest("sk-limited"),
        vllm.url("/v1"),
        ollama.url("")
    );
    let gw = Gateway::start(&config);
    let list = wait_for(&gw, "vllm/meta-llama/Llama-3.1-8B-Instruct").await;
    wait_for(&gw, "ollama/llama3.2:latest").await;
    assert!(
        list.contains(&"vllm/*".to_owned()),
        "the pattern is listed too: {list:?}"
    );
    assert!(list.contains(&"plain".to_owned()));

    state.store(1, Ordering::SeqCst);
    wait_for(&gw, "vllm/Qwen/Qwen2.5-7B").await;

    // The key's allow-list applies to discovered names too.
    let limited = ids(&gw, &[("authorization", "Bearer sk-limited")]).await;
    assert_eq!(limited, ["vllm/meta-llama/Llama-3.1-8B-Instruct"]);

    // The backend goes down: its last list stays.
    state.store(2, Ordering::SeqCst);
    let errors_before = vllm.hits();
    while vllm.hits() < errors_before + 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let list = ids(&gw, &[]).await;
    assert!(
        list.contains(&"vllm/Qwen/Qwen2.5-7B".to_owned()),
        "{list:?}"
    );
    assert!(
        gw.logs()
            .iter()
            .any(|l| l.contains("model discovery failed"))
    );
}

#[tokio::test]
async fn switchyard_models_lists_discovered_models() {
    let ollama = Mock::start(|_| {
        Plan::json(
            200,
            json!({"models": [{"name": "qwen2.5:7b", "model": "qwen2.5:7b"}]}),
        )
    })
    .await;
    let dir = TempDir::new();
    let path = dir.path().join("c.yaml");
    std::fs::write(
        &path,
        format!(
            "providers: {{ollama: {{type: ollama, base_url: \"{}\", discover: true}}}}\nmodels: {{\"ollama/*\": {{targets: [{{provider: ollama}}]}}}}\n",
            ollama.url("")
        ),
    )
    .unwrap();
    let path = path.to_string_lossy().into_owned();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["models", "--config", &path])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("ollama/qwen2.5:7b"))
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>(),
        ["ollama/qwen2.5:7b", "ollama", "ollama", "qwen2.5:7b", "1"]
    );
}

#[test]
fn a_provider_that_cannot_list_models_is_a_config_error() {
    let dir = TempDir::new();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, "providers: {c: {type: anthropic, discover: true}}\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["check", "--config", &path.to_string_lossy()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("providers.c.discover: a provider of type anthropic cannot list its models"),
        "{text}"
    );
}
