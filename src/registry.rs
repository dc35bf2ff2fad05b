//! The compiled config behind one `ArcSwap`, and the state that outlives it.
//!
//! A [`Snapshot`] holds the config together with everything derived from it
//! (keys, aliases, adapters). A request loads it once and carries it along,
//! so a reload never changes a request half-way. Connection pools live in
//! [`Shared`], keyed by stable ids, so a reload resets nothing it did not change.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use indexmap::IndexMap;

use crate::auth::KeyTable;
use crate::config::raw::LogFormat;
use crate::discovery::Discovery;
use crate::dispatch::health::HealthTable;
use crate::dispatch::limit::LimiterTable;
use crate::dispatch::retry::{BudgetTable, Routing};
use crate::limits::{Clock, Engine, Policy, Stores, SystemClock};
use crate::metrics::Metrics;
use crate::provider::Provider;
use crate::route::Aliases;
use crate::upstream::Pools;

/// Settings of the process and of every request.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub log_level: String,
    pub log_format: LogFormat,
    /// Prompts and completions go to the log (`log.bodies`).
    pub log_bodies: bool,
    pub max_request_body: u64,
    pub max_header_bytes: u64,
    pub max_response_body: u64,
    pub client_header_timeout: Duration,
    pub client_body_timeout: Duration,
    pub shutdown_grace: Duration,
}

/// One compiled config. Immutable.
#[derive(Debug)]
pub struct Snapshot {
    pub settings: Settings,
    pub keys: KeyTable,
    pub providers: IndexMap<Arc<str>, Arc<Provider>>,
    pub aliases: Aliases,
    pub routing: Routing,
    pub limits: Policy,
    /// When it was compiled (Unix seconds): the `created` of `/v1/models`.
    pub created: u64,
}

/// State that outlives snapshots, keyed by stable ids.
pub struct Shared {
    pub metrics: Arc<Metrics>,
    /// Admission control for rate limits and budgets.
    pub limits: Arc<Engine>,
    pub limit_stores: Stores,
    pub pools: Pools,
    pub health: HealthTable,
    pub limiters: LimiterTable,
    pub budgets: BudgetTable,
    pub discovery: Arc<Discovery>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared::with_clock(Arc::new(SystemClock))
    }
}

impl Shared {
    /// Shared state whose rate limits read `clock`.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        let metrics = Arc::new(Metrics::new());
        Shared {
            limits: Arc::new(Engine::new(clock, metrics.clone())),
            metrics,
            limit_stores: Stores::default(),
            pools: Pools::default(),
            health: HealthTable::default(),
            limiters: LimiterTable::default(),
            budgets: BudgetTable::default(),
            discovery: Arc::default(),
        }
    }
}

/// The current snapshot.
pub struct Registry {
    current: ArcSwap<Snapshot>,
    pub shared: Arc<Shared>,
}

impl Registry {
    pub fn new(first: Snapshot, shared: Arc<Shared>) -> Self {
        let registry = Registry {
            current: ArcSwap::from_pointee(first),
            shared,
        };
        registry.reconcile();
        registry.restart_checks();
        registry
    }

    /// The snapshot a new request runs on.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Swaps in a new snapshot; requests in flight keep the old one.
    pub fn install(&self, next: Snapshot) {
        self.current.store(Arc::new(next));
        self.reconcile();
        self.restart_checks();
    }

    /// After a config was compiled and then rejected: compiling touched the
    /// shared tables (limiters, budgets, target health), so they go back to
    /// what the running snapshot holds.
    pub fn rejected(&self) {
        self.reconcile();
    }

    /// Makes the shared state match the current snapshot: what it no longer
    /// uses is dropped, what it holds is what the tables hold.
    fn reconcile(&self) {
        let snapshot = self.current.load();
        let shared = &self.shared;
        let pools: Vec<_> = snapshot
            .providers
            .values()
            .filter_map(|p| p.pool.clone())
            .collect();
        shared.pools.retain(&pools);
        shared.limiters.reconcile(
            snapshot
                .providers
                .values()
                .filter_map(|p| Some((p.id.clone(), p.limiter.clone()?))),
        );
        shared.budgets.reconcile(
            snapshot.routing.budget,
            snapshot
                .aliases
                .all
                .iter()
                .map(|a| (a.name.clone(), a.budget.clone())),
        );
        shared
            .limit_stores
            .retain(std::slice::from_ref(&snapshot.limits.store_key));
        let targets: Vec<_> = snapshot
            .aliases
            .all
            .iter()
            .flat_map(|a| a.targets.iter())
            .map(|t| (t.state.provider.clone(), t.state.model.clone()))
            .collect();
        shared.health.retain(&targets, &shared.metrics);
    }

    /// Restarts the active health checks for the current snapshot.
    fn restart_checks(&self) {
        let snapshot = self.current.load();
        let shared = &self.shared;
        if tokio::runtime::Handle::try_current().is_ok() {
            let checked: Vec<_> = snapshot
                .providers
                .values()
                .filter(|p| p.health_check.is_some())
                .map(|p| {
                    let states = snapshot
                        .aliases
                        .all
                        .iter()
                        .flat_map(|a| a.targets.iter())
                        .filter(|t| Arc::ptr_eq(&t.provider, p))
                        .map(|t| t.state.clone())
                        .collect();
                    (p.clone(), states)
                })
                .collect();
            shared.health.start_checks(
                &checked,
                snapshot.routing.cooldown_after,
                snapshot.routing.cooldown_for,
            );
            shared
                .discovery
                .start(snapshot.providers.values().cloned().collect());
        }
    }
}
