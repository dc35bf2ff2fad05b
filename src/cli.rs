//! The command line: `serve`, `check`, `keys new`, `models`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

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
    builder.enable_all().build()
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
