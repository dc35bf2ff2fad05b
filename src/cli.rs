//! The command line: `serve`, `check`, `keys new`, `models`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::discovery::ModelList;
use crate::registry::{Shared, Snapshot};

#[derive(Debug, Parser)]
#[command(
    name = "switchyard",
    version,
    about = "An OpenAI-compatible gateway in front of many LLM backends"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct ConfigArg {
    /// The config file.
    #[arg(
        long,
        short,
        env = "SWITCHYARD_CONFIG",
        default_value = "config/switchyard.yaml"
    )]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve(ConfigArg),
    /// Validate a config and print every problem with its YAML path.
    Check(ConfigArg),
    /// Manage gateway keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Print the alias table as the gateway resolves it.
    Models(ConfigArg),
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Print a fresh key once, and the config entry holding its digest.
    New {
        /// The key's id: what logs and metrics show instead of the key.
        #[arg(long)]
        id: String,
    },
}

pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(arg) => serve(arg.config),
        Command::Check(arg) => check(&arg.config),
        Command::Models(arg) => models(&arg.config),
        Command::Keys {
            command: KeysCommand::New { id },
        } => keys_new(&id),
    }
}

/// The runtime `serve` runs on, sized to the cores the process may use: on
/// one core (a pinned process, a one-CPU container) a multi-thread
/// scheduler only adds synchronisation and cross-thread wake-ups.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let one_core = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let mut builder = if one_core {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    anchored(builder.enable_all())
}

/// Builds the runtime with a timer renewed every second. tokio wakes its
/// driver (writes to an eventfd: a system call) whenever a timer is set to
/// fire before every timer it holds, and on a quiet gateway hyper's
/// `client_header` timer, set again after every keep-alive request, usually
/// is: 0.86 writes per request at concurrency 1. With the earliest timer
/// never more than a second away, timers of a second or more need no write.
fn anchored(builder: &mut tokio::runtime::Builder) -> std::io::Result<tokio::runtime::Runtime> {
    let runtime = builder.build()?;
    runtime.spawn(async {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    Ok(runtime)
}

fn serve(config: PathBuf) -> ExitCode {
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchyard: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::app::serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("switchyard: {message}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &Path) -> Result<Snapshot, ExitCode> {
    let env = |k: &str| std::env::var(k).ok();
    crate::config::load(path, &env, &Arc::new(Shared::default())).map_err(|problems| {
        for p in &problems {
            println!("{p}");
        }
        eprintln!(
            "{}: {} problem{}",
            path.display(),
            problems.len(),
            if problems.len() == 1 { "" } else { "s" }
        );
        ExitCode::FAILURE
    })
}

fn check(path: &Path) -> ExitCode {
    match load(path) {
        Ok(s) => {
            println!(
                "{}: ok ({} providers, {} aliases, {} keys)",
                path.display(),
                s.providers.len(),
                s.aliases.all.len(),
                s.keys.len()
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn models(path: &Path) -> ExitCode {
    let snapshot = match load(path) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut rows = vec![[
        "ALIAS".to_owned(),
        "PROVIDER".to_owned(),
        "TYPE".to_owned(),
        "BACKEND MODEL".to_owned(),
        "WEIGHT".to_owned(),
    ]];
    let discovered = discover(&snapshot);
    for alias in &snapshot.aliases.all {
        if alias.wildcard {
            for name in crate::discovery::expand(alias, |p| {
                discovered
                    .get(p)
                    .cloned()
                    .unwrap_or_else(|| std::sync::Arc::from([]))
            }) {
                if let Some(route) = snapshot.aliases.resolve(&name)
                    && std::sync::Arc::ptr_eq(&route.alias, alias)
                {
                    for t in alias.targets.iter().filter(|t| t.model.is_none()) {
                        rows.push([
                            name.clone(),
                            t.provider.id.to_string(),
                            t.provider.kind.clone(),
                            route.default_model.to_string(),
                            t.weight.to_string(),
                        ]);
                    }
                }
            }
        }
        for t in &alias.targets {
            let model = match (&t.model, alias.wildcard) {
                (Some(m), _) => m.to_string(),
                (None, true) => "(the part * matched)".to_owned(),
                (None, false) => alias.name.to_string(),
            };
            rows.push([
                alias.name.to_string(),
                t.provider.id.to_string(),
                t.provider.kind.clone(),
                model,
                t.weight.to_string(),
            ]);
        }
    }
    let widths: Vec<usize> = (0..5)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    ExitCode::SUCCESS
}

/// Asks every provider with `discover` on for its models, once.
fn discover(snapshot: &Snapshot) -> std::collections::HashMap<String, ModelList> {
    let mut found = std::collections::HashMap::new();
    let providers: Vec<_> = snapshot
        .providers
        .values()
        .filter(|p| p.discover.is_some())
        .cloned()
        .collect();
    if providers.is_empty() {
        return found;
    }
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return found;
    };
    runtime.block_on(async {
        for p in providers {
            match crate::discovery::fetch(&p).await {
                Ok(models) => {
                    found.insert(p.id.to_string(), models.into());
                }
                Err(f) => eprintln!("{}: cannot list its models: {}", p.id, f.message),
            }
        }
    });
    found
}

fn keys_new(id: &str) -> ExitCode {
    if id.trim().is_empty() || id.chars().any(|c| c.is_control() || c == '"') {
        eprintln!("switchyard: --id must be a non-empty name without quotes");
        return ExitCode::FAILURE;
    }
    let key = match crate::auth::generate_key() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("switchyard: the OS random number generator failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{key}");
    println!("- id: {id}");
    println!("  sha256: \"{}\"", crate::auth::digest_hex(&key));
    ExitCode::SUCCESS
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::future::Future;
    use std::pin::{Pin, pin};
    use std::task::{Context, Waker};
    use std::time::Duration;

    use tokio::time::Sleep;

    /// Write system calls this thread has made (tokio wakes its driver by
    /// writing to an eventfd).
    fn writes() -> u64 {
        let io = std::fs::read_to_string("/proc/thread-self/io").expect("/proc/thread-self/io");
        io.lines()
            .find_map(|line| line.strip_prefix("syscw:"))
            .and_then(|n| n.trim().parse().ok())
            .expect("a syscw line")
    }

    /// Registers a timer with the driver (its first poll).
    fn arm(sleep: Pin<&mut Sleep>) {
        assert!(
            sleep
                .poll(&mut Context::from_waker(Waker::noop()))
                .is_pending()
        );
    }

    /// What a keep-alive connection does at the end of each request: sets
    /// its 10 s header timer while a 60 s one is pending (another request's
    /// first-byte timer). The runtime parks between requests, when the
    /// header timer is gone. Counts the writes that 50 of those make.
    fn writes_for_50_sooner_timers(anchored: bool) -> u64 {
        let mut builder = tokio::runtime::Builder::new_current_thread();
        builder.enable_all();
        let runtime = if anchored {
            super::anchored(&mut builder)
        } else {
            builder.build()
        }
        .expect("a runtime");
        runtime.block_on(async {
            // In a task: waking the block_on future itself writes the eventfd.
            tokio::spawn(async {
                let mut far = pin!(tokio::time::sleep(Duration::from_secs(60)));
                arm(far.as_mut());
                tokio::task::yield_now().await;
                let before = writes();
                for _ in 0..50 {
                    {
                        let mut near = pin!(tokio::time::sleep(Duration::from_secs(10)));
                        arm(near.as_mut());
                    }
                    // Parked without it, the driver plans to wake for the far one.
                    tokio::task::yield_now().await;
                }
                writes() - before
            })
            .await
            .expect("the timer task")
        })
    }

    #[test]
    fn the_runtime_is_not_woken_for_timers_sooner_than_the_others() {
        // The premise: tokio writes its eventfd for each of these timers.
        let plain = writes_for_50_sooner_timers(false);
        assert!(plain >= 45, "{plain} writes without the anchor");
        let anchored = writes_for_50_sooner_timers(true);
        assert!(anchored <= 2, "{anchored} writes with the anchor");
    }
}
