//! Logs: tracing-subscriber to stderr, JSON or human-readable, with the
//! level from `RUST_LOG` or else `log.level`, changeable by a reload.
//!
//! Lines are formatted on the thread that logs and written to stderr by a
//! thread of their own (tracing-appender's non-blocking writer), which
//! writes whatever has queued up in one go: a request never waits for the
//! log's reader, and a busy gateway makes one `write` for many lines. When
//! the reader falls [`QUEUED_LINES`] behind, further lines are dropped and
//! counted (`switchyard_log_lines_dropped_total`) rather than stalling
//! requests.

mod json;

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

use crate::config::raw::LogFormat;

use json::{Fields, Lines};

/// Lines that may wait for the writer thread; about 5 MB of access lines.
pub const QUEUED_LINES: usize = 16 * 1024;

static LEVEL: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Keeps the writer thread; dropping it writes out the lines still queued.
#[must_use = "dropping it stops the log writer"]
pub struct Logging {
    _writer: WorkerGuard,
}

/// Installs the global subscriber. Call once, before anything logs, and
/// keep what it returns until the process is done logging.
pub fn init(level: &str, format: LogFormat) -> Logging {
    let from_env = std::env::var("RUST_LOG").is_ok_and(|v| !v.is_empty());
    let filter = if from_env {
        EnvFilter::from_default_env()
    } else {
        EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"))
    };
    let (filter, handle) = reload::Layer::new(filter);
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("switchyard-log")
        .finish(std::io::BufWriter::new(std::io::stderr()));
    let dropped = writer.error_counter();
    let output = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .fmt_fields(Fields)
            .event_format(Lines)
            .with_writer(writer)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(writer)
            .boxed(),
    };
    if tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .try_init()
        .is_ok()
    {
        let _ = DROPPED.set(dropped);
        if !from_env {
            let _ = LEVEL.set(handle);
        }
    }
    Logging { _writer: guard }
}

/// Log lines dropped because the writer thread was too far behind.
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |d| d.dropped_lines() as u64)
}

/// Says in the log, at most every `period`, how many lines were dropped
/// since it last said so: without a metrics scraper the gap in the log is
/// otherwise silent. A warning that is itself dropped is counted and said
/// at the next look.
pub async fn report_drops(period: std::time::Duration) {
    let mut said = 0;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Some(dropped) = newly_dropped(&mut said, dropped_lines()) {
            tracing::warn!(
                dropped,
                "log lines were dropped: the reader of stderr fell more than {QUEUED_LINES} lines behind"
            );
        }
    }
}

/// Lines dropped since `said`, which moves up to `dropped`; `None` if none.
fn newly_dropped(said: &mut u64, dropped: u64) -> Option<u64> {
    let new = dropped.checked_sub(*said).filter(|&n| n > 0)?;
    *said = dropped;
    Some(new)
}

/// Applies a new `log.level` after a reload (unless `RUST_LOG` rules).
pub fn set_level(level: &str) {
    if let (Some(handle), Ok(filter)) = (LEVEL.get(), EnvFilter::try_new(level)) {
        let _ = handle.reload(filter);
    }
}

#[cfg(test)]
mod tests {
    use super::newly_dropped;

    #[test]
    fn drops_are_reported_once_each() {
        let mut said = 0;
        assert_eq!(newly_dropped(&mut said, 0), None);
        assert_eq!(newly_dropped(&mut said, 300), Some(300));
        assert_eq!(newly_dropped(&mut said, 300), None);
        assert_eq!(newly_dropped(&mut said, 301), Some(1));
        assert_eq!(said, 301);
    }
}
