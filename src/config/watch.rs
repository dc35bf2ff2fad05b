//! Hot reload: file events and SIGHUP feed one channel and one reload path.
//!
//! The watcher watches the config file's directory, not the file, so editors
//! that save by rename and Kubernetes ConfigMap symlink swaps are both seen.
//! Events are debounced; a file event whose content did not change is not a
//! reload. A SIGHUP always is. A bad file is rejected with a log line per
//! problem and the running config keeps serving.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::gateway::State;

const DEBOUNCE: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    File,
    Signal,
}

/// Starts the watcher, the SIGHUP listener and the reload task. `loaded` is
/// the text of the running config, so a change made before the task first
/// runs is still seen as a change.
pub fn spawn(state: Arc<State>, path: PathBuf, loaded: &str) {
    let mut last = Some(Sha256::digest(loaded.as_bytes()).into());
    let (tx, mut rx) = mpsc::channel::<Trigger>(64);

    let file_tx = tx.clone();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = file_tx.try_send(Trigger::File);
        }
    });
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(FsPath::new("."))
        .to_path_buf();
    let watcher = match watcher {
        Ok(mut w) => match w.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => Some(w),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the config directory; reload with SIGHUP");
                None
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "no file watcher; reload with SIGHUP");
            None
        }
    };

    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP");
            return;
        };
        while hup.recv().await.is_some() {
            if tx.send(Trigger::Signal).await.is_err() {
                return;
            }
        }
    });

    tokio::spawn(async move {
        let _watcher = watcher;
        while let Some(first) = rx.recv().await {
            let mut forced = first == Trigger::Signal;
            // Debounce: wait until the burst of events is over.
            loop {
                match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                    Ok(Some(t)) => forced |= t == Trigger::Signal,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            reload(&state, &path, forced, &mut last);
        }
    });
}

fn reload(state: &State, path: &FsPath, forced: bool, last: &mut Option<[u8; 32]>) {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            if forced || last.is_some() {
                state
                    .metrics()
                    .config_reloads
                    .with_label_values(&["rejected"])
                    .inc();
                tracing::error!(path = %path.display(), error = %e, "config reload rejected: cannot read the file; keeping the running config");
                *last = None;
            }
            return;
        }
    };
    let digest: [u8; 32] = Sha256::digest(text.as_bytes()).into();
    if !forced && *last == Some(digest) {
        return;
    }
    *last = Some(digest);
    // An empty file is a write caught half-way (truncated, not yet written)
    // far more often than a wish to drop every route: never install one.
    if text.trim().is_empty() {
        state
            .metrics()
            .config_reloads
            .with_label_values(&["rejected"])
            .inc();
        tracing::error!(path = %path.display(), "config reload rejected: the file is empty; keeping the running config");
        return;
    }
    let env = |k: &str| std::env::var(k).ok();
    match super::load::load_str(&text, &env, &state.registry.shared) {
        Ok(next) => {
            let current = state.registry.load();
            let (old, new) = (&current.settings, &next.settings);
            if old.listen != new.listen || old.admin_listen != new.admin_listen {
                tracing::warn!(
                    "listen and admin_listen change only with a restart; still serving on {} and {}",
                    old.listen,
                    old.admin_listen
                );
            }
            if old.log_format != new.log_format {
                tracing::warn!("log.format changes only with a restart");
            }
            if old.log_level != new.log_level {
                crate::telemetry::set_level(&new.log_level);
            }
            let summary = format!(
                "{} providers, {} aliases, {} keys",
                next.providers.len(),
                next.aliases.all.len(),
                next.keys.len()
            );
            state.registry.install(next);
            state
                .metrics()
                .config_reloads
                .with_label_values(&["ok"])
                .inc();
            tracing::info!(path = %path.display(), %summary, "config reloaded");
        }
        Err(problems) => {
            state.registry.rejected();
            state
                .metrics()
                .config_reloads
                .with_label_values(&["rejected"])
                .inc();
            for p in &problems {
                tracing::error!(path = %path.display(), problem = %p, "config problem");
            }
            tracing::error!(
                path = %path.display(),
                problems = problems.len(),
                first = %problems[0],
                "config reload rejected; keeping the running config"
            );
        }
    }
}
