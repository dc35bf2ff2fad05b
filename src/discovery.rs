//! Model discovery: providers with `discover: true` are asked, in the
//! background, which models they serve (`GET …/models` for OpenAI-compatible
//! servers, `/api/tags` for Ollama). Wildcard aliases that route to them list
//! those models in `/v1/models` and `switchyard models`. A backend that is down
//! keeps its last list.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::provider::Provider;
use crate::route::Alias;
use crate::upstream::Failure;

/// A provider's model names.
pub type ModelList = Arc<[Arc<str>]>;

/// The last model list of every discovering provider, kept across reloads.
#[derive(Default)]
pub struct Discovery {
    lists: Mutex<HashMap<Arc<str>, ModelList>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Discovery {
    /// The models `provider` reported last (empty before its first answer).
    pub fn models(&self, provider: &str) -> ModelList {
        let lists = self.lists.lock().unwrap_or_else(|p| p.into_inner());
        lists
            .get(provider)
            .cloned()
            .unwrap_or_else(|| Arc::from([]))
    }

    fn set(&self, provider: &Arc<str>, models: Vec<Arc<str>>) {
        let mut lists = self.lists.lock().unwrap_or_else(|p| p.into_inner());
        let changed = lists.get(provider).is_none_or(|old| **old != *models);
        if changed {
            tracing::info!(provider = %provider, models = models.len(), "discovered the provider's models");
            lists.insert(provider.clone(), models.into());
        }
    }

    /// Replaces the refresh tasks with one per discovering provider.
    pub fn start(self: &Arc<Self>, providers: Vec<Arc<Provider>>) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        for task in tasks.drain(..) {
            task.abort();
        }
        {
            let ids: Vec<&str> = providers.iter().map(|p| &*p.id).collect();
            let mut lists = self.lists.lock().unwrap_or_else(|p| p.into_inner());
            lists.retain(|k, _| ids.contains(&&**k));
        }
        for provider in providers {
            let Some(every) = provider.discover else {
                continue;
            };
            let table = self.clone();
            tasks.push(tokio::spawn(async move {
                let mut ticks = tokio::time::interval(every);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    match fetch(&provider).await {
                        Ok(models) => table.set(&provider.id, models),
                        Err(f) => tracing::warn!(
                            provider = %provider.id,
                            error = %f.message,
                            "model discovery failed; keeping the last list"
                        ),
                    }
                }
            }));
        }
    }
}

/// Asks a provider for its models once.
pub async fn fetch(provider: &Provider) -> Result<Vec<Arc<str>>, Failure> {
    let Some(uri) = provider.adapter.models_uri() else {
        return Ok(Vec::new());
    };
    let timeout = provider.timeouts.first_byte.min(Duration::from_secs(10));
    let deadline = tokio::time::Instant::now() + timeout;
    let response = tokio::time::timeout_at(deadline, provider.get(uri))
        .await
        .map_err(|_| {
            Failure::new(
                crate::upstream::Cause::FirstByteTimeout,
                "no answer in time",
            )
        })??;
    let (head, body) = response.into_parts();
    let body = crate::dispatch::attempt::read_body(body, 4 << 20, deadline).await?;
    if !head.status.is_success() {
        return Err(provider.adapter.failure(head.status, &head.headers, &body));
    }
    let names = provider.adapter.parse_models(&body)?;
    Ok(names.into_iter().map(Arc::from).collect())
}

/// The concrete names a wildcard alias stands for, from what its providers
/// discovered: `ollama/*` over a provider that serves `llama3` lists `ollama/llama3`.
pub fn expand(alias: &Alias, discovered: impl Fn(&str) -> ModelList) -> Vec<String> {
    let Some((pre, post)) = alias.name.split_once('*') else {
        return Vec::new();
    };
    let mut names: Vec<String> = alias
        .targets
        .iter()
        .filter(|t| t.model.is_none() && t.provider.discover.is_some())
        .flat_map(|t| {
            discovered(&t.provider.id)
                .iter()
                .map(|m| format!("{pre}{m}{post}"))
                .collect::<Vec<_>>()
        })
        .collect();
    names.sort();
    names.dedup();
    names
}
