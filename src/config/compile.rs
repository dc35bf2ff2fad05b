//! Raw config → [`Snapshot`]: cross references, units, globs, credentials.
//! Every problem is collected with its YAML path; nothing is half-built.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use globset::GlobSetBuilder;
use http::{HeaderMap, HeaderName, HeaderValue};
use indexmap::IndexMap;

use super::{Path, Problem, raw, units};
use crate::adapter::{self, AuthStyle};
use crate::auth::{self, Key, KeyTable};
use crate::dispatch::AnswerHeaders;
use crate::dispatch::health::HealthCheck;
use crate::dispatch::retry::{RetryBudget, Routing};
use crate::limits::{Amount, BudgetSpec, LimitSpec, OnStoreError, Period, Policy, RuleKeys};
use crate::provider::Provider;
use crate::registry::{Settings, Shared, Snapshot};
use crate::route::{self, Alias, Aliases, Target};
use crate::secret::Secret;
use crate::upstream::{ExtraRoots, PoolKey, Stamp, Timeouts, Transport, stamp};

pub fn compile(raw: raw::Config, shared: &Shared) -> Result<Snapshot, Vec<Problem>> {
    let mut problems = Vec::new();
    let root = Path::root();

    let settings = settings(&raw, &mut problems);
    let defaults = timeouts(&raw.timeouts, None, &root.key("timeouts"), &mut problems);
    let keys = keys(&raw, &mut problems);
    let routing = routing(&raw.routing, &root.key("routing"), &mut problems);
    let limits = rate_limits(
        &raw.rate_limits,
        &root.key("rate_limits"),
        shared,
        &mut problems,
    );

    let mut providers = IndexMap::new();
    for (id, p) in &raw.providers {
        let path = root.key("providers").key(id.as_str());
        if let Some(provider) = provider(id, p, &defaults, &path, shared, &mut problems) {
            providers.insert(Arc::<str>::from(id.as_str()), Arc::new(provider));
        }
    }

    let mut aliases = Aliases::default();
    let metrics = &shared.metrics;
    for (name, m) in &raw.models {
        let alias_name: Arc<str> = Arc::from(name.as_str());
        let path = root.key("models").key(name.as_str());
        let mut targets = Vec::with_capacity(m.targets.len());
        if m.targets.is_empty() {
            problems.push(Problem::new(
                path.key("targets"),
                "an alias needs at least one target",
            ));
        }
        for (i, t) in m.targets.iter().enumerate() {
            let tpath = path.key("targets").index(i);
            match providers.get(t.provider.as_str()) {
                Some(p) => {
                    let model: Option<Arc<str>> = t.model.as_deref().map(Arc::from);
                    let label = model.clone().unwrap_or_else(|| alias_name.clone());
                    targets.push(Target {
                        provider: Arc::clone(p),
                        state: shared.health.target(&p.id, &label, metrics),
                        answer: AnswerHeaders::new(p.id_header.as_ref(), model.as_deref()),
                        model: model.map(route::ModelName::new),
                        weight: t.weight,
                    })
                }
                None if raw.providers.contains_key(&t.provider) => {} // reported at the provider
                None => problems.push(Problem::new(
                    tpath.key("provider"),
                    format!("no provider named {:?}", t.provider),
                )),
            }
        }
        if !m.targets.is_empty() && m.targets.iter().all(|t| t.weight == 0) {
            problems.push(Problem::new(
                path.key("targets"),
                "every target has weight 0; at least one must be positive",
            ));
        }
        for (i, f) in m.fallbacks.iter().enumerate() {
            let fpath = path.key("fallbacks").index(i);
            if f == name {
                problems.push(Problem::new(fpath, "an alias cannot fall back to itself"));
            } else if route::is_pattern(f) {
                problems.push(Problem::new(
                    fpath,
                    "a fallback must be an alias name, not a pattern",
                ));
            } else if !raw.models.contains_key(f) {
                problems.push(Problem::new(fpath, format!("no alias named {f:?}")));
            }
        }
        let wildcard = route::is_pattern(name);
        let price = m.price.as_ref().map(|p| crate::limits::Price {
            prompt: p.prompt,
            completion: p.completion,
        });
        if let Some(p) = &m.price
            && (p.prompt < 0.0
                || p.completion < 0.0
                || !p.prompt.is_finite()
                || !p.completion.is_finite())
        {
            problems.push(Problem::new(
                path.key("price"),
                "prices must be finite and not negative",
            ));
        }
        let alias = Arc::new(Alias {
            limits: limit_spec(&m.limits, &path.key("limits"), &mut problems),
            limit_keys: RuleKeys::new(&format!("alias:{alias_name}")),
            price,
            budget: shared.budgets.budget(&alias_name, routing.budget),
            as_model: route::ModelName::new(alias_name.clone()),
            name: alias_name,
            targets,
            wildcard,
            fallbacks: m.fallbacks.iter().map(|f| Arc::from(f.as_str())).collect(),
        });
        if wildcard {
            match route::glob(name) {
                Ok(glob) => aliases.insert_wildcard(glob.compile_matcher(), alias),
                Err(e) => problems.push(Problem::new(path, format!("bad pattern: {e}"))),
            }
        } else {
            aliases.insert_exact(alias);
        }
    }

    if !problems.is_empty() {
        return Err(problems);
    }
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(Snapshot {
        settings: settings.expect("no problems means settings compiled"),
        keys: KeyTable::new(keys, raw.auth.required),
        providers,
        aliases,
        routing,
        limits: limits.expect("no problems means rate_limits compiled"),
        created,
    })
}

/// The cross-reference checks that still make sense on a file that does not
/// deserialise: every target names a provider that exists.
pub fn references(value: &serde_json::Value) -> Vec<Problem> {
    let providers = value.get("providers").and_then(|p| p.as_object());
    let mut problems = Vec::new();
    let Some(models) = value.get("models").and_then(|m| m.as_object()) else {
        return problems;
    };
    for (name, model) in models {
        let Some(targets) = model.get("targets").and_then(|t| t.as_array()) else {
            continue;
        };
        for (i, t) in targets.iter().enumerate() {
            if let Some(p) = t.get("provider").and_then(|p| p.as_str())
                && !providers.is_some_and(|all| all.contains_key(p))
            {
                problems.push(Problem::new(
                    Path::root()
                        .key("models")
                        .key(name.as_str())
                        .key("targets")
                        .index(i)
                        .key("provider"),
                    format!("no provider named {p:?}"),
                ));
            }
        }
    }
    problems
}

fn settings(raw: &raw::Config, problems: &mut Vec<Problem>) -> Option<Settings> {
    let root = Path::root();
    let addr = |text: &str, key: &str, problems: &mut Vec<Problem>| match text.parse::<SocketAddr>()
    {
        Ok(a) => Some(a),
        Err(_) => {
            problems.push(Problem::new(
                root.key(key),
                format!("{text:?} is not an address like 0.0.0.0:8080 or [::1]:8080"),
            ));
            None
        }
    };
    let listen = addr(&raw.listen, "listen", problems);
    let admin_listen = addr(&raw.admin_listen, "admin_listen", problems);
    if let (Some(a), Some(b)) = (listen, admin_listen)
        && a == b
        && a.port() != 0
    {
        problems.push(Problem::new(
            root.key("admin_listen"),
            "must differ from `listen`",
        ));
    }
    let limits = root.key("limits");
    let size = |text: &str, key: &str, problems: &mut Vec<Problem>| {
        units::size(text)
            .map_err(|e| problems.push(Problem::new(limits.key(key), e)))
            .ok()
    };
    let max_request_body = size(&raw.limits.max_request_body, "max_request_body", problems);
    let max_header_bytes = size(&raw.limits.max_header_bytes, "max_header_bytes", problems);
    let max_response_body = size(&raw.limits.max_response_body, "max_response_body", problems);
    let client_header_timeout = duration(
        raw.timeouts.client_header.as_deref().unwrap_or("10s"),
        &root.key("timeouts").key("client_header"),
        problems,
    );
    let client_body_timeout = duration(
        raw.timeouts.client_body.as_deref().unwrap_or("60s"),
        &root.key("timeouts").key("client_body"),
        problems,
    );
    let shutdown_grace = duration(&raw.shutdown_grace, &root.key("shutdown_grace"), problems);
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&raw.log.level) {
        problems.push(Problem::new(
            root.key("log").key("level"),
            format!("bad level: {e}"),
        ));
    }
    Some(Settings {
        listen: listen?,
        admin_listen: admin_listen?,
        log_level: raw.log.level.clone(),
        log_format: raw.log.format,
        log_bodies: raw.log.bodies,
        max_request_body: max_request_body?,
        max_header_bytes: max_header_bytes?,
        max_response_body: max_response_body?,
        client_header_timeout: client_header_timeout?,
        client_body_timeout: client_body_timeout?,
        shutdown_grace: shutdown_grace?,
    })
}

fn duration(text: &str, path: &Path, problems: &mut Vec<Problem>) -> Option<Duration> {
    units::duration(text)
        .map_err(|e| problems.push(Problem::new(path.clone(), e)))
        .ok()
}

/// The global timeouts (`base` = None) or a provider's over the global ones.
fn timeouts(
    raw: &raw::Timeouts,
    base: Option<&Timeouts>,
    path: &Path,
    problems: &mut Vec<Problem>,
) -> Timeouts {
    let defaults = base.copied().unwrap_or(Timeouts {
        connect: Duration::from_secs(5),
        first_byte: Duration::from_secs(120),
        stream_idle: Duration::from_secs(60),
        total: Duration::from_secs(600),
    });
    let mut one = |text: &Option<String>, key: &str, default: Duration| match text {
        None => default,
        Some(t) => match duration(t, &path.key(key), problems) {
            Some(d) if d.is_zero() => {
                problems.push(Problem::new(path.key(key), "must be greater than zero"));
                default
            }
            Some(d) => d,
            None => default,
        },
    };
    let t = Timeouts {
        connect: one(&raw.connect, "connect", defaults.connect),
        first_byte: one(&raw.first_byte, "first_byte", defaults.first_byte),
        stream_idle: one(&raw.stream_idle, "stream_idle", defaults.stream_idle),
        total: one(&raw.total, "total", defaults.total),
    };
    if base.is_some() {
        for (key, set) in [
            ("client_header", &raw.client_header),
            ("client_body", &raw.client_body),
        ] {
            if set.is_some() {
                problems.push(Problem::new(
                    path.key(key),
                    "is a server setting; set it under the top-level `timeouts`",
                ));
            }
        }
    }
    t
}

fn keys(raw: &raw::Config, problems: &mut Vec<Problem>) -> Vec<Arc<Key>> {
    let mut out: Vec<Arc<Key>> = Vec::with_capacity(raw.keys.len());
    for (i, k) in raw.keys.iter().enumerate() {
        let path = Path::root().key("keys").index(i);
        if let Some(first) = raw.keys[..i].iter().position(|o| o.id == k.id) {
            problems.push(Problem::new(
                path.key("id"),
                format!("duplicate key id {:?} (also keys[{first}])", k.id),
            ));
        }
        let Some(digest) = auth::parse_digest(&k.sha256) else {
            problems.push(Problem::new(
                path.key("sha256"),
                "must be the 64 hex digits that `switchyard keys new` prints",
            ));
            continue;
        };
        if let Some(other) = out.iter().find(|o| o.digest == digest) {
            problems.push(Problem::new(
                path.key("sha256"),
                format!("the same key is already configured as {:?}", other.id),
            ));
        }
        let models = match &k.models {
            None => None,
            Some(patterns) => {
                let mut set = GlobSetBuilder::new();
                for (j, pattern) in patterns.iter().enumerate() {
                    match route::glob(pattern) {
                        Ok(g) => {
                            set.add(g);
                        }
                        Err(e) => problems.push(Problem::new(
                            path.key("models").index(j),
                            format!("bad pattern: {e}"),
                        )),
                    }
                }
                set.build().ok()
            }
        };
        let mut budgets = Vec::new();
        for (j, b) in k.budgets.iter().enumerate() {
            let bpath = path.key("budgets").index(j);
            let period = match b.period.as_str() {
                "day" => Period::Day,
                "month" => Period::Month,
                other => {
                    problems.push(Problem::new(
                        bpath.key("period"),
                        format!("{other:?} is not day or month"),
                    ));
                    continue;
                }
            };
            let amount = match (b.tokens, b.cost) {
                (Some(t), None) => Amount::Tokens(t),
                (None, Some(c)) if c.is_finite() && c >= 0.0 => {
                    Amount::Cost((c * 1e6).round() as u64)
                }
                (None, Some(_)) => {
                    problems.push(Problem::new(
                        bpath.key("cost"),
                        "must be a number not below 0",
                    ));
                    continue;
                }
                _ => {
                    problems.push(Problem::new(
                        bpath,
                        "set exactly one of `tokens` and `cost`",
                    ));
                    continue;
                }
            };
            budgets.push(BudgetSpec { period, amount });
        }
        out.push(Arc::new(Key {
            id: Arc::from(k.id.as_str()),
            digest,
            models,
            limits: limit_spec(&k.limits, &path.key("limits"), problems),
            limit_keys: RuleKeys::new(&format!("key:{}", k.id)),
            budgets,
        }));
    }
    out
}

fn provider(
    id: &str,
    raw: &raw::Provider,
    defaults: &Timeouts,
    path: &Path,
    shared: &Shared,
    problems: &mut Vec<Problem>,
) -> Option<Provider> {
    let before = problems.len();
    let built = adapter::build(id, raw, path, problems);
    let timeouts = timeouts(
        &raw.timeouts,
        Some(defaults),
        &path.key("timeouts"),
        problems,
    );

    let style = match &raw.auth_header {
        None => built.as_ref().map(|b| b.default_auth.clone()),
        Some(raw::AuthHeader::Mode(m)) => match m.as_str() {
            "bearer" => Some(AuthStyle::Bearer),
            "x-api-key" => Some(AuthStyle::Header(HeaderName::from_static("x-api-key"))),
            "none" => Some(AuthStyle::None),
            other => {
                problems.push(Problem::new(
                    path.key("auth_header"),
                    format!("{other:?} is not bearer, x-api-key, none or {{name: Header-Name}}"),
                ));
                None
            }
        },
        Some(raw::AuthHeader::Custom { name }) => match HeaderName::try_from(name.as_str()) {
            Ok(h) => Some(AuthStyle::Header(h)),
            Err(_) => {
                problems.push(Problem::new(
                    path.key("auth_header").key("name"),
                    format!("{name:?} is not a valid header name"),
                ));
                None
            }
        },
    };
    let api_key = raw.api_key.as_deref().filter(|k| !k.is_empty());
    let credential = match (&style, api_key) {
        (Some(AuthStyle::Bearer), Some(key)) => Some((
            http::header::AUTHORIZATION,
            sensitive(&format!("Bearer {key}")),
        )),
        (Some(AuthStyle::Header(name)), Some(key)) => Some((name.clone(), sensitive(key))),
        _ => None,
    };
    let credential = match credential {
        Some((name, Some(value))) => Some((name, value)),
        Some((_, None)) => {
            problems.push(Problem::new(
                path.key("api_key"),
                "contains characters that cannot be sent in a header",
            ));
            None
        }
        None => None,
    };

    let mut headers = HeaderMap::new();
    for (name, value) in &raw.headers {
        match (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            (Ok(n), Ok(_)) if stamp::set_by_gateway(&n) => problems.push(Problem::new(
                path.key("headers").key(name.as_str()),
                "is set by the gateway and cannot be configured",
            )),
            (Ok(n), Ok(v)) => {
                headers.insert(n, v);
            }
            _ => problems.push(Problem::new(
                path.key("headers").key(name.as_str()),
                "not a valid header name and value",
            )),
        }
    }

    let limiter = match (raw.max_concurrent, raw.max_queue) {
        (Some(0), _) => {
            problems.push(Problem::new(
                path.key("max_concurrent"),
                "must be at least 1",
            ));
            None
        }
        (Some(max), queue) => Some(shared.limiters.limiter(
            &Arc::from(id),
            max,
            queue.unwrap_or(max.saturating_mul(4)),
        )),
        (None, Some(_)) => {
            problems.push(Problem::new(
                path.key("max_queue"),
                "needs `max_concurrent`",
            ));
            None
        }
        (None, None) => None,
    };
    let health_check = raw.health_check.as_ref().and_then(|c| {
        let cpath = path.key("health_check");
        let interval = duration(&c.interval, &cpath.key("interval"), problems);
        let timeout = duration(&c.timeout, &cpath.key("timeout"), problems);
        let url = check_url(raw.base_url.as_deref(), &c.path);
        if url.is_none() {
            problems.push(Problem::new(
                cpath.key("path"),
                "needs an absolute URL, or a path from the host root with `base_url` set",
            ));
        }
        Some(HealthCheck {
            url: url?,
            interval: interval.filter(|d| !d.is_zero())?,
            timeout: timeout?,
        })
    });

    let discover = match &raw.discover {
        None | Some(raw::Discover::On(false)) => None,
        Some(raw::Discover::On(true)) => Some(Duration::from_secs(60)),
        Some(raw::Discover::Every { interval }) => {
            duration(interval, &path.key("discover").key("interval"), problems)
                .filter(|d| !d.is_zero())
        }
    };
    if discover.is_some()
        && built
            .as_ref()
            .is_some_and(|b| b.adapter.models_uri().is_none())
    {
        problems.push(Problem::new(
            path.key("discover"),
            format!("a provider of type {} cannot list its models", raw.kind),
        ));
    }

    let ca = raw
        .ca_file
        .as_deref()
        .and_then(|file| match ca_certificates(file) {
            Ok(ca) => Some(ca),
            Err(e) => {
                problems.push(Problem::new(path.key("ca_file"), e));
                None
            }
        });

    let built = built?;
    if problems.len() != before {
        return None;
    }
    let id: Arc<str> = Arc::from(id);
    let (transport, pool) = match built.transport {
        Some(transport) => (transport.with_connect_timeout(timeouts.connect), None),
        None => {
            let key = PoolKey {
                provider: id.clone(),
                connect: timeouts.connect,
                ca: ca.as_ref().map(|(digest, _)| *digest),
            };
            let roots = ca.map(|(_, certs)| certs).unwrap_or_default();
            let client = shared.pools.client(key.clone(), &roots);
            (Transport::Http(client), Some(key))
        }
    };
    Some(Provider {
        id_header: HeaderValue::try_from(&*id).ok(),
        inflight: shared.metrics.inflight.with_label_values(&[&*id]),
        answered_ok: Default::default(),
        id,
        kind: raw.kind.clone(),
        adapter: built.adapter,
        transport,
        api_key: api_key.map(Secret::new),
        stamp: Stamp::new(&headers, credential),
        timeouts,
        pool,
        limiter,
        health_check,
        discover,
    })
}

fn limit_spec(raw: &raw::RateLimit, path: &Path, problems: &mut Vec<Problem>) -> LimitSpec {
    for (name, value) in [
        ("rpm", raw.rpm),
        ("tpm", raw.tpm),
        ("max_concurrent", raw.max_concurrent),
    ] {
        if value == Some(0) {
            problems.push(Problem::new(
                path.key(name),
                "must be at least 1 (leave it out for no limit)",
            ));
        }
    }
    LimitSpec {
        rpm: raw.rpm,
        tpm: raw.tpm,
        max_concurrent: raw.max_concurrent,
    }
}

fn rate_limits(
    raw: &raw::RateLimits,
    path: &Path,
    shared: &Shared,
    problems: &mut Vec<Problem>,
) -> Option<Policy> {
    let on_store_error = match raw.on_store_error.as_str() {
        "open" => OnStoreError::Open,
        "closed" => OnStoreError::Closed,
        other => {
            problems.push(Problem::new(
                path.key("on_store_error"),
                format!("{other:?} is not open or closed"),
            ));
            return None;
        }
    };
    let timeout = duration(&raw.timeout, &path.key("timeout"), problems)?;
    if raw.store != "memory"
        && !raw.store.starts_with("redis://")
        && !raw.store.starts_with("rediss://")
    {
        problems.push(Problem::new(
            path.key("store"),
            "must be memory or a redis:// URL",
        ));
        return None;
    }
    let store = match shared.limit_stores.get(&raw.store, &raw.prefix) {
        Ok(s) => s,
        Err(e) => {
            problems.push(Problem::new(path.key("store"), e));
            return None;
        }
    };
    Some(Policy {
        store,
        store_key: (raw.store.clone(), raw.prefix.clone()),
        on_store_error,
        timeout,
        completion_estimate: raw.completion_estimate,
    })
}

/// The certificates of a PEM file, and a digest of the file so that a pool
/// is rebuilt when the file changes.
fn ca_certificates(file: &str) -> Result<([u8; 32], ExtraRoots), String> {
    use sha2::Digest;
    use tokio_rustls::rustls::pki_types::{CertificateDer, pem::PemObject};
    let pem = std::fs::read(file).map_err(|e| format!("cannot read {file}: {e}"))?;
    let certs: ExtraRoots = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{file} is not a PEM certificate bundle: {e:?}"))?;
    if certs.is_empty() {
        return Err(format!("{file} holds no PEM certificate"));
    }
    Ok((sha2::Sha256::digest(&pem).into(), certs))
}

/// A health check URL: `path` itself when absolute, else `path` from the
/// host root of `base_url`.
fn check_url(base: Option<&str>, path: &str) -> Option<http::Uri> {
    if path.starts_with("http://") || path.starts_with("https://") {
        return path.parse().ok();
    }
    let base: http::Uri = base?.parse().ok()?;
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    http::Uri::builder()
        .scheme(base.scheme()?.clone())
        .authority(base.authority()?.clone())
        .path_and_query(path)
        .build()
        .ok()
}

fn routing(raw: &raw::Routing, path: &Path, problems: &mut Vec<Problem>) -> Routing {
    let retry = &raw.retry;
    let rpath = path.key("retry");
    let mut on_connect = false;
    let mut on_timeout = false;
    let mut on_status = Vec::new();
    for (i, cond) in retry.on.iter().enumerate() {
        match cond {
            raw::RetryOn::Name(n) if n == "connect" => on_connect = true,
            raw::RetryOn::Name(n) if n == "timeout" => on_timeout = true,
            raw::RetryOn::Name(n) => match n.parse::<u16>() {
                Ok(s) if (400..600).contains(&s) => on_status.push(s),
                _ => problems.push(Problem::new(
                    rpath.key("on").index(i),
                    format!("{n:?} is not connect, timeout or an HTTP status from 400 to 599"),
                )),
            },
            raw::RetryOn::Status(s) if (400..600).contains(s) => on_status.push(*s),
            raw::RetryOn::Status(s) => problems.push(Problem::new(
                rpath.key("on").index(i),
                format!("{s} is not an HTTP error status (400 to 599)"),
            )),
        }
    }
    let base = duration(
        &retry.backoff.base,
        &rpath.key("backoff").key("base"),
        problems,
    );
    let max = duration(
        &retry.backoff.max,
        &rpath.key("backoff").key("max"),
        problems,
    );
    if let (Some(b), Some(m)) = (base, max)
        && b > m
    {
        problems.push(Problem::new(
            rpath.key("backoff"),
            "`base` must not exceed `max`",
        ));
    }
    let window = duration(
        &retry.budget.window,
        &rpath.key("budget").key("window"),
        problems,
    )
    .unwrap_or(Duration::from_secs(10));
    if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&window) {
        problems.push(Problem::new(
            rpath.key("budget").key("window"),
            "must be between 1s and 60s",
        ));
    }
    let ratio = retry.budget.ratio;
    if !(0.0..=1000.0).contains(&ratio) {
        problems.push(Problem::new(
            rpath.key("budget").key("ratio"),
            "must be between 0 and 1000",
        ));
    }
    if retry.attempts == 0 {
        problems.push(Problem::new(
            rpath.key("attempts"),
            "must be at least 1 (the first try counts)",
        ));
    }
    let cooldown_for = duration(
        &raw.cooldown.duration,
        &path.key("cooldown").key("for"),
        problems,
    );
    Routing {
        attempts: retry.attempts.max(1),
        backoff_base: base.unwrap_or(Duration::from_millis(100)),
        backoff_max: max.unwrap_or(Duration::from_secs(2)),
        on_connect,
        on_timeout,
        on_status,
        cooldown_after: raw.cooldown.after_failures.max(1),
        cooldown_for: cooldown_for.unwrap_or(Duration::from_secs(30)),
        budget: RetryBudget {
            ratio: if (0.0..=1000.0).contains(&ratio) {
                ratio
            } else {
                0.2
            },
            min_per_second: retry.budget.min_per_second,
            window: window.clamp(Duration::from_secs(1), Duration::from_secs(60)),
        },
    }
}

fn sensitive(value: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::try_from(value).ok()?;
    v.set_sensitive(true);
    Some(v)
}
