//! Rate limits and budgets, per gateway key and per alias.
//!
//! - Requests and tokens per minute use GCRA (a smooth token bucket holding
//!   one minute's worth): a burst can spend a full minute's allowance at once,
//!   then the allowance refills continuously; there are no window edges to
//!   burst across.
//! - Token limits are charged an estimate before the request (prompt bytes / 4
//!   plus `max_tokens`, or `rate_limits.completion_estimate`) and settled to
//!   the usage the backend reports when the response ends.
//! - Concurrent requests are leases that end with the response body, or
//!   expire on their own if a gateway dies holding them.
//! - Budgets count tokens, or cost from per-model prices, per UTC day or month.
//!
//! State lives in a [`Store`]: in this process (`memory`) or in Redis, shared
//! by every replica. Each admission is one atomic round trip; settlement is
//! one more, off the request's path. The clock is injectable: the store is
//! always told "now", so tests need no sleeps.

pub mod layer;
pub mod memory;
pub mod redis;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderName, HeaderValue};

use crate::auth::Caller;
use crate::call::Call;
use crate::error::{Error, Kind};
use crate::metrics::Metrics;
use crate::openai::{Endpoint, Usage};
use crate::registry::Snapshot;
use crate::route::Alias;

// === what the config says ===

/// `rpm`, `tpm`, `max_concurrent`, of a key or an alias.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitSpec {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub max_concurrent: Option<u64>,
}

impl LimitSpec {
    pub fn is_empty(&self) -> bool {
        self.rpm.is_none() && self.tpm.is_none() && self.max_concurrent.is_none()
    }
}

/// The store keys of a key's or an alias's limits (`key:<id>:rpm`,
/// `alias:<name>:tpm`, …), made once when the config compiles.
#[derive(Debug, Clone)]
pub struct RuleKeys {
    rpm: Arc<str>,
    tpm: Arc<str>,
    concurrency: Arc<str>,
}

impl RuleKeys {
    /// `scope` is `key:<id>` or `alias:<name>`.
    pub fn new(scope: &str) -> Self {
        RuleKeys {
            rpm: format!("{scope}:rpm").into(),
            tpm: format!("{scope}:tpm").into(),
            concurrency: format!("{scope}:concurrency").into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Day,
    Month,
}

impl Period {
    fn name(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Month => "month",
        }
    }

    /// The period holding `now_ms`: an id for store keys, and its end.
    pub fn current(self, now_ms: u64) -> (String, u64) {
        let day = (now_ms / 86_400_000) as i64;
        let (y, m, d) = civil_from_days(day);
        match self {
            Period::Day => (
                format!("{y:04}-{m:02}-{d:02}"),
                (day as u64 + 1) * 86_400_000,
            ),
            Period::Month => {
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (
                    format!("{y:04}-{m:02}"),
                    days_from_civil(ny, nm, 1) as u64 * 86_400_000,
                )
            }
        }
    }
}

/// What a budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    Tokens(u64),
    /// Millionths of the price unit (dollars, usually).
    Cost(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetSpec {
    pub period: Period,
    pub amount: Amount,
}

/// Price per million tokens (so, in millionths, per token).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub prompt: f64,
    pub completion: f64,
}

impl Price {
    /// Cost of `usage` in millionths of the price unit, rounded up.
    pub fn micros(&self, usage: Usage) -> u64 {
        (usage.prompt_tokens as f64 * self.prompt
            + usage.completion_tokens as f64 * self.completion)
            .ceil()
            .max(0.0) as u64
    }
}

/// What to do when the store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreError {
    /// Let requests through unlimited (logged, counted).
    Open,
    /// Refuse requests that have limits with 503.
    Closed,
}

/// `rate_limits:` compiled.
#[derive(Debug, Clone)]
pub struct Policy {
    pub store: Arc<Store>,
    /// `(rate_limits.store, rate_limits.prefix)`: which store this is.
    pub store_key: (String, String),
    pub on_store_error: OnStoreError,
    /// The longest wait for the store before `on_store_error` applies.
    pub timeout: Duration,
    /// Completion tokens assumed when a request sets no `max_tokens`.
    pub completion_estimate: u64,
}

// === what stores do ===

/// One thing an admission checks.
#[derive(Debug, Clone, PartialEq)]
pub enum RuleKind {
    /// GCRA: at most `limit` units per `period_ms`; this request costs `cost`.
    Rate {
        limit: u64,
        period_ms: u64,
        cost: u64,
    },
    /// At most `limit` leases at once; this request holds lease `lease` until `until_ms`.
    Concurrency {
        limit: u64,
        lease: u64,
        until_ms: u64,
    },
    /// At most `limit` spent in the period ending at `ends_ms`.
    Budget { limit: u64, ends_ms: u64 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub key: Arc<str>,
    pub kind: RuleKind,
}

/// A rule's state after a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RuleState {
    pub remaining: u64,
    /// Until the allowance is whole again, or the period ends.
    pub reset_ms: u64,
    /// When denied: how long until it could pass; `None` when it never can.
    pub retry_after_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The first rule that denied, if any; nothing was charged then.
    pub denied: Option<usize>,
    pub states: Vec<RuleState>,
}

/// What settling a finished request writes.
#[derive(Debug, Clone, PartialEq)]
pub enum Charge {
    /// Adds `delta` units (negative: refunds) to a rate rule.
    Adjust {
        key: Arc<str>,
        limit: u64,
        period_ms: u64,
        delta: i64,
    },
    Release {
        key: Arc<str>,
        lease: u64,
    },
    Spend {
        key: Arc<str>,
        amount: u64,
        ends_ms: u64,
    },
}

#[derive(Debug)]
pub struct StoreError(pub String);

/// Where limit state lives.
#[derive(Debug)]
pub enum Store {
    Memory(memory::MemoryStore),
    Redis(redis::RedisStore),
}

impl Store {
    pub async fn check(&self, now_ms: u64, rules: &[Rule]) -> Result<Verdict, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.check(now_ms, rules)),
            // Boxed: inline, the Redis round trip's future would make every
            // request's admission future as large, limits or none.
            Store::Redis(r) => crate::inplace::pinned(|| r.check(now_ms, rules)).await,
        }
    }

    pub async fn settle(&self, now_ms: u64, charges: &[Charge]) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                m.settle(now_ms, charges);
                Ok(())
            }
            Store::Redis(r) => r.settle(now_ms, charges).await,
        }
    }

    fn describe(&self) -> &'static str {
        match self {
            Store::Memory(_) => "memory",
            Store::Redis(_) => "redis",
        }
    }
}

/// Stores by their config string, so a reload that keeps `rate_limits.store`
/// keeps its counters (and its Redis connection).
#[derive(Default)]
pub struct Stores {
    stores: Mutex<HashMap<(String, String), Arc<Store>>>,
}

impl Stores {
    /// The store for `url` (`memory` or `redis://…`) with key `prefix`.
    pub fn get(&self, url: &str, prefix: &str) -> Result<Arc<Store>, String> {
        let mut stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        let key = (url.to_owned(), prefix.to_owned());
        if let Some(s) = stores.get(&key) {
            return Ok(s.clone());
        }
        let store = if url == "memory" {
            Store::Memory(memory::MemoryStore::default())
        } else {
            Store::Redis(redis::RedisStore::new(url, prefix)?)
        };
        let store = Arc::new(store);
        stores.insert(key, store.clone());
        Ok(store)
    }

    pub fn retain(&self, keep: &[(String, String)]) {
        let mut stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        stores.retain(|k, _| keep.contains(k));
    }
}

// === the clock ===

/// Milliseconds since the Unix epoch.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> u64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn at(ms: u64) -> Self {
        ManualClock(AtomicU64::new(ms))
    }

    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

// === admission ===

/// Whose limit a rule is, for messages, headers and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Key,
    Alias,
}

/// Which limit a rule is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum What {
    Rpm,
    Tpm,
    Concurrency,
    /// Keys only.
    Budget,
}

impl What {
    /// The `limit` label of `switchyard_rate_limited_total`.
    fn label(self, owner: Owner) -> &'static str {
        match (owner, self) {
            (Owner::Key, What::Rpm) => "rpm",
            (Owner::Key, What::Tpm) => "tpm",
            (Owner::Key, What::Concurrency) => "concurrency",
            (_, What::Budget) => "budget",
            (Owner::Alias, What::Rpm) => "alias_rpm",
            (Owner::Alias, What::Tpm) => "alias_tpm",
            (Owner::Alias, What::Concurrency) => "alias_concurrency",
        }
    }
}

#[derive(Debug, Clone)]
struct RuleMeta {
    owner: Owner,
    what: What,
    limit: u64,
    budget: Option<BudgetSpec>,
}

/// The limits engine: the clock and the metrics; stores come with the policy.
pub struct Engine {
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    /// When the last store error was logged (ms), so an outage logs once a minute.
    last_logged: AtomicU64,
}

impl Engine {
    pub fn new(clock: Arc<dyn Clock>, metrics: Arc<Metrics>) -> Self {
        Engine {
            clock,
            metrics,
            last_logged: AtomicU64::new(0),
        }
    }

    /// Checks and charges every limit that applies to `call`; the ticket
    /// settles the charges when dropped or settled.
    pub async fn admit(&self, call: &Call) -> Result<Ticket, Error> {
        let policy = &call.snapshot.limits;
        let alias = &call.route.alias;
        let key = match &call.caller {
            Caller::Key(k) => Some(k.clone()),
            Caller::Anonymous => None,
        };
        let no_key_limits = key
            .as_ref()
            .is_none_or(|k| k.limits.is_empty() && k.budgets.is_empty());
        if no_key_limits && alias.limits.is_empty() {
            return Ok(Ticket::empty());
        }

        let now = self.clock.now_ms();
        let estimate = estimate(call, policy.completion_estimate);
        let lease = fastrand::u64(..) >> 12;
        // Worked out once, and only when a concurrency rule needs it.
        let mut lease_until = None;
        let mut rules = Vec::new();
        let mut metas = Vec::new();
        let mut push = |owner, key: &Arc<str>, what: What, limit: u64, kind: RuleKind, budget| {
            rules.push(Rule {
                key: key.clone(),
                kind,
            });
            metas.push(RuleMeta {
                owner,
                what,
                limit,
                budget,
            });
        };
        let scopes = [
            key.as_ref().map(|k| (Owner::Key, &k.limit_keys, k.limits)),
            Some((Owner::Alias, &alias.limit_keys, alias.limits)),
        ];
        for (owner, keys, spec) in scopes.into_iter().flatten() {
            if let Some(rpm) = spec.rpm {
                push(
                    owner,
                    &keys.rpm,
                    What::Rpm,
                    rpm,
                    RuleKind::Rate {
                        limit: rpm,
                        period_ms: 60_000,
                        cost: 1,
                    },
                    None,
                );
            }
            if let Some(tpm) = spec.tpm {
                push(
                    owner,
                    &keys.tpm,
                    What::Tpm,
                    tpm,
                    RuleKind::Rate {
                        limit: tpm,
                        period_ms: 60_000,
                        cost: estimate,
                    },
                    None,
                );
            }
            if let Some(max) = spec.max_concurrent {
                let until_ms = *lease_until.get_or_insert_with(|| {
                    now + lease_for(&call.snapshot, alias).as_millis() as u64
                });
                push(
                    owner,
                    &keys.concurrency,
                    What::Concurrency,
                    max,
                    RuleKind::Concurrency {
                        limit: max,
                        lease,
                        until_ms,
                    },
                    None,
                );
            }
        }
        if let Some(k) = &key {
            for b in &k.budgets {
                let (id, ends_ms) = b.period.current(now);
                let (unit, limit) = match b.amount {
                    Amount::Tokens(n) => ("tokens", n),
                    Amount::Cost(n) => ("cost", n),
                };
                rules.push(Rule {
                    key: format!("key:{}:budget:{}:{id}:{unit}", k.id, b.period.name()).into(),
                    kind: RuleKind::Budget { limit, ends_ms },
                });
                metas.push(RuleMeta {
                    owner: Owner::Key,
                    what: What::Budget,
                    limit,
                    budget: Some(*b),
                });
            }
        }

        let checked = tokio::time::timeout(policy.timeout, policy.store.check(now, &rules)).await;
        let verdict = match checked {
            Ok(Ok(v)) => v,
            Ok(Err(StoreError(e))) => return self.store_failed(policy, &e),
            Err(_) => return self.store_failed(policy, "no answer in time"),
        };
        let key_label = call.caller.label();
        let mut headers = Vec::new();
        for (meta, state) in metas.iter().zip(&verdict.states) {
            if meta.owner == Owner::Key {
                rate_headers(&mut headers, meta, state);
            }
        }
        if let Some(i) = verdict.denied {
            let (meta, state) = (&metas[i], verdict.states[i]);
            self.metrics
                .rate_limited
                .with_label_values(&[key_label, meta.what.label(meta.owner)])
                .inc();
            let mut e = Error::new(Kind::RateLimited, denial(call, meta, state, estimate, now));
            e.retry_after = state.retry_after_ms.map(Duration::from_millis);
            e.headers = headers;
            return Err(e);
        }

        let mut charges = Vec::new();
        for (rule, meta) in rules.iter().zip(&metas) {
            match (&rule.kind, meta.budget) {
                (
                    RuleKind::Rate {
                        limit,
                        period_ms,
                        cost,
                    },
                    _,
                ) if meta.what == What::Tpm => charges.push(Pending::Tokens {
                    key: rule.key.clone(),
                    limit: *limit,
                    period_ms: *period_ms,
                    estimate: *cost,
                }),
                (RuleKind::Concurrency { lease, .. }, _) => charges.push(Pending::Lease {
                    key: rule.key.clone(),
                    lease: *lease,
                }),
                (RuleKind::Budget { ends_ms, .. }, Some(b)) => charges.push(Pending::Budget {
                    key: rule.key.clone(),
                    ends_ms: *ends_ms,
                    cost: matches!(b.amount, Amount::Cost(_)),
                }),
                _ => {}
            }
        }
        Ok(Ticket {
            settle: Some(Settle {
                store: policy.store.clone(),
                timeout: policy.timeout,
                metrics: self.metrics.clone(),
                clock: self.clock.clone(),
                price: alias.price,
                charges,
            }),
            headers,
        })
    }

    fn store_failed(&self, policy: &Policy, error: &str) -> Result<Ticket, Error> {
        self.metrics
            .limit_store_errors
            .with_label_values(&[policy.store.describe()])
            .inc();
        let now = self.clock.now_ms();
        let last = self.last_logged.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 60_000
            && self
                .last_logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                store = policy.store.describe(),
                error,
                policy = ?policy.on_store_error,
                "the rate limit store is unavailable"
            );
        }
        match policy.on_store_error {
            OnStoreError::Open => Ok(Ticket::empty()),
            OnStoreError::Closed => Err(Error::new(
                Kind::Overloaded,
                "rate limits cannot be checked right now; try again shortly",
            )
            .with_code("rate_limit_store_unavailable")
            .with_retry_after(Some(Duration::from_secs(1)))),
        }
    }
}

/// How long a concurrency lease lives: past the longest request the call can
/// become on its alias or on any of the alias's fallbacks, then it expires
/// (so that a replica that died cannot hold a slot for ever).
fn lease_for(snapshot: &Snapshot, alias: &Alias) -> Duration {
    let fallbacks = alias
        .fallbacks
        .iter()
        .filter_map(|name| snapshot.aliases.get_exact(name));
    std::iter::once(alias)
        .chain(fallbacks.map(|a| &**a))
        .flat_map(|a| &a.targets)
        .map(|t| t.provider.timeouts.total)
        .max()
        .unwrap_or_default()
        + Duration::from_secs(60)
}

/// Tokens a request may use: the prompt at four bytes a token, plus the
/// completion it allows.
fn estimate(call: &Call, completion_estimate: u64) -> u64 {
    let prompt = (call.view.prompt_bytes as u64).div_ceil(4);
    let completion = match call.endpoint {
        Endpoint::Embeddings => 0,
        _ => call.view.max_tokens.unwrap_or(completion_estimate),
    };
    prompt.saturating_add(completion).max(1)
}

/// A count as a signed delta's operand; beyond `i64::MAX` it saturates.
fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn denial(call: &Call, meta: &RuleMeta, state: RuleState, estimate: u64, now: u64) -> String {
    let whose = match meta.owner {
        Owner::Key => format!("key {}", call.caller.label()),
        Owner::Alias => format!("model {}", call.route.alias.name),
    };
    let again = |s: &mut String| {
        if let Some(ms) = state.retry_after_ms {
            let _ = write!(s, " Please try again in {}.", go_duration(ms));
        }
    };
    let mut s = match meta.what {
        What::Rpm => format!(
            "Rate limit reached for {whose} on requests per minute (rpm): limit {}.",
            meta.limit
        ),
        What::Tpm if state.retry_after_ms.is_none() => format!(
            "This request needs about {estimate} tokens, more than {whose} may use per minute (tpm limit {}). Send a shorter prompt or a lower max_tokens.",
            meta.limit
        ),
        What::Tpm => format!(
            "Rate limit reached for {whose} on tokens per minute (tpm): limit {}, remaining {}, requested about {estimate}.",
            meta.limit, state.remaining
        ),
        What::Concurrency => format!(
            "Too many concurrent requests for {whose}: limit {}.",
            meta.limit
        ),
        What::Budget => {
            let b = meta.budget.expect("budget rules carry their spec");
            let amount = match b.amount {
                Amount::Tokens(n) => format!("{n} tokens"),
                Amount::Cost(n) => format!("a cost of {}", n as f64 / 1e6),
            };
            let (_, ends) = b.period.current(now);
            return format!(
                "The {} budget of {whose} ({amount} per {}) is spent; it resets at {}.",
                b.period.name(),
                b.period.name(),
                httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(ends))
            );
        }
    };
    again(&mut s);
    s
}

/// The OpenAI header family for a key's request and token limits.
fn rate_headers(headers: &mut Vec<(HeaderName, HeaderValue)>, meta: &RuleMeta, state: &RuleState) {
    let [limit, remaining, reset] = match meta.what {
        What::Rpm => crate::headers::RATELIMIT_REQUESTS,
        What::Tpm => crate::headers::RATELIMIT_TOKENS,
        What::Concurrency | What::Budget => return,
    };
    headers.push((limit, HeaderValue::from(meta.limit)));
    headers.push((remaining, HeaderValue::from(state.remaining)));
    if let Ok(v) = HeaderValue::try_from(go_duration(state.reset_ms)) {
        headers.push((reset, v));
    }
}

/// A duration as OpenAI writes resets: `12ms`, `1.5s`, `6m0s`, `1h2m3s`.
pub fn go_duration(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    if ms < 60_000 {
        let s = format!("{:.3}", ms as f64 / 1000.0);
        return format!("{}s", s.trim_end_matches('0').trim_end_matches('.'));
    }
    let secs = ms.div_ceil(1000);
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else {
        format!("{m}m{s}s")
    }
}

// === settlement ===

#[derive(Debug)]
enum Pending {
    Tokens {
        key: Arc<str>,
        limit: u64,
        period_ms: u64,
        estimate: u64,
    },
    Lease {
        key: Arc<str>,
        lease: u64,
    },
    Budget {
        key: Arc<str>,
        ends_ms: u64,
        cost: bool,
    },
}

struct Settle {
    store: Arc<Store>,
    /// The store's `timeout`, and where its errors are counted.
    timeout: Duration,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    price: Option<Price>,
    charges: Vec<Pending>,
}

/// An admitted request's charges, settled when the response ends (with the
/// usage the backend reported) or when it is dropped (leases released, the
/// token estimate kept).
pub struct Ticket {
    settle: Option<Settle>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

impl Ticket {
    fn empty() -> Self {
        Ticket {
            settle: None,
            headers: Vec::new(),
        }
    }

    /// The `x-ratelimit-*` headers of the key's limits.
    pub fn headers(&self) -> &[(HeaderName, HeaderValue)] {
        &self.headers
    }

    /// Settles with what the request really used (`None`: unknown): at once
    /// in the memory store, in the background for Redis (the handle says
    /// when the store has it).
    pub fn settle(mut self, usage: Option<Usage>) -> Option<tokio::task::JoinHandle<()>> {
        self.finish(usage)
    }

    fn finish(&mut self, usage: Option<Usage>) -> Option<tokio::task::JoinHandle<()>> {
        let settle = self.settle.take()?;
        let used = usage.map(|u| u.prompt_tokens.saturating_add(u.completion_tokens));
        let charges: Vec<Charge> = settle
            .charges
            .into_iter()
            .filter_map(|p| match p {
                Pending::Tokens {
                    key,
                    limit,
                    period_ms,
                    estimate,
                } => used.map(|used| Charge::Adjust {
                    key,
                    limit,
                    period_ms,
                    delta: signed(used).saturating_sub(signed(estimate)),
                }),
                Pending::Lease { key, lease } => Some(Charge::Release { key, lease }),
                Pending::Budget { key, ends_ms, cost } => {
                    let amount = match (usage, cost) {
                        (None, _) => 0,
                        (Some(u), false) => u.prompt_tokens.saturating_add(u.completion_tokens),
                        (Some(u), true) => settle.price.map_or(0, |p| p.micros(u)),
                    };
                    (amount > 0).then_some(Charge::Spend {
                        key,
                        amount,
                        ends_ms,
                    })
                }
            })
            .filter(|c| !matches!(c, Charge::Adjust { delta: 0, .. }))
            .collect();
        if charges.is_empty() {
            return None;
        }
        let now = settle.clock.now_ms();
        if let Store::Memory(memory) = &*settle.store {
            // A lock and a few map updates: cheaper than a task.
            memory.settle(now, &charges);
            return None;
        }
        let (store, timeout, metrics) = (settle.store, settle.timeout, settle.metrics);
        let apply = async move {
            let error = match tokio::time::timeout(timeout, store.settle(now, &charges)).await {
                Ok(Ok(())) => return,
                Ok(Err(StoreError(e))) => e,
                Err(_) => "no answer in time".to_owned(),
            };
            metrics
                .limit_store_errors
                .with_label_values(&[store.describe()])
                .inc();
            tracing::warn!(
                store = store.describe(),
                error,
                "could not settle a request's rate limits"
            );
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => Some(handle.spawn(apply)),
            Err(_) => {
                tracing::warn!("no runtime to settle rate limits on");
                None
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let _ = self.finish(None);
    }
}

// === calendar arithmetic (proleptic Gregorian, UTC) ===

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests;
