//! Building and running the whole process: config, logs, listeners, the
//! public stack, the admin stack, reload, and shutdown on SIGTERM/SIGINT.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::Admin;
use crate::config;
use crate::gateway::{Gateway, State};
use crate::registry::{Registry, Shared};
use crate::server;

/// Runs the gateway until SIGTERM or SIGINT; returns after draining.
pub async fn serve(path: PathBuf) -> Result<(), String> {
    let shared = Arc::new(Shared::default());
    let env = |k: &str| std::env::var(k).ok();
    let text = config::load::read(&path).map_err(|p| p[0].to_string())?;
    let snapshot = config::load::load_str(&text, &env, &shared).map_err(|problems| {
        let mut text = format!("{}: the config is not valid:", path.display());
        for p in problems {
            text.push_str("\n  ");
            text.push_str(&p.to_string());
        }
        text
    })?;
    let settings = snapshot.settings.clone();
    let _logging = crate::telemetry::init(&settings.log_level, settings.log_format);
    tokio::spawn(crate::telemetry::report_drops(
        std::time::Duration::from_secs(10),
    ));
    raise_open_file_limit();

    let public = TcpListener::bind(settings.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", settings.listen))?;
    let admin = TcpListener::bind(settings.admin_listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", settings.admin_listen))?;
    let listen = public.local_addr().map_err(|e| e.to_string())?;
    let admin_listen = admin.local_addr().map_err(|e| e.to_string())?;

    let state = Arc::new(State {
        registry: Registry::new(snapshot, shared),
        draining: AtomicBool::new(false),
    });
    config::watch::spawn(state.clone(), path.clone(), &text);

    let (stop, stopped) = watch::channel(false);
    let signals = state.clone();
    tokio::spawn(async move {
        wait_for_shutdown_signal().await;
        signals.draining.store(true, Ordering::Relaxed);
        tracing::info!("shutting down: readiness off, draining in-flight requests");
        let _ = stop.send(true);
    });

    let options = server::Options {
        header_read_timeout: settings.client_header_timeout,
        max_header_buffer: (settings.max_header_bytes as usize)
            .saturating_mul(4)
            .max(64 * 1024),
        grace: settings.shutdown_grace,
    };
    tracing::info!(
        %listen,
        %admin_listen,
        config = %path.display(),
        version = env!("CARGO_PKG_VERSION"),
        "switchyard is serving"
    );
    // The admin listener outlives the public one, so probes see `/readyz`
    // answer 503 while in-flight requests drain.
    let (admin_stop, admin_stopped) = watch::channel(false);
    let public = async {
        server::serve(
            public,
            Gateway::new(state.clone()),
            options,
            stopped,
            "public",
        )
        .await;
        let _ = admin_stop.send(true);
    };
    let admin = server::serve(
        admin,
        Admin::new(state.clone()),
        options,
        admin_stopped,
        "admin",
    );
    tokio::join!(public, admin);
    tracing::info!("stopped");
    Ok(())
}

/// Every stream holds two sockets: lift the soft open-file limit to the hard
/// one, so that a default of 1,024 does not cap the gateway at ~500 streams.
fn raise_open_file_limit() {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit only read and write the struct passed.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0
                || limit.rlim_cur >= limit.rlim_max
            {
                return;
            }
            let from = limit.rlim_cur;
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                tracing::debug!(from, to = limit.rlim_max, "raised the open-file limit");
            }
        }
    }
}

async fn wait_for_shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
