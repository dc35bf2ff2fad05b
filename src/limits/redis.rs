//! The shared store: Redis, one atomic Lua script per admission and one per
//! settlement, over redis-rs's `ConnectionManager` (one multiplexed
//! connection per gateway that pipelines every request's commands, and
//! reconnects by itself after Redis restarts).

use std::sync::OnceLock;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{Charge, Rule, RuleKind, RuleState, StoreError, Verdict};

static CHECK: OnceLock<redis::Script> = OnceLock::new();
static SETTLE: OnceLock<redis::Script> = OnceLock::new();

pub struct RedisStore {
    client: redis::Client,
    prefix: String,
    /// Made on first use, inside the runtime.
    connection: OnceLock<ConnectionManager>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: it is never printed.
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    pub fn new(url: &str, prefix: &str) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("not a Redis URL: {e}"))?;
        Ok(RedisStore {
            client,
            prefix: prefix.to_owned(),
            connection: OnceLock::new(),
        })
    }

    fn connection(&self) -> Result<ConnectionManager, StoreError> {
        if let Some(c) = self.connection.get() {
            return Ok(c.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            .map_err(|e| StoreError(e.to_string()))?;
        Ok(self.connection.get_or_init(|| manager).clone())
    }

    pub async fn check(&self, now_ms: u64, rules: &[Rule]) -> Result<Verdict, StoreError> {
        let script = CHECK.get_or_init(|| redis::Script::new(include_str!("check.lua")));
        let mut invocation = script.prepare_invoke();
        invocation.arg(now_ms);
        for rule in rules {
            invocation.key(format!("{}{}", self.prefix, rule.key));
            match &rule.kind {
                RuleKind::Rate {
                    limit,
                    period_ms,
                    cost,
                } => invocation.arg(1).arg(limit).arg(period_ms).arg(cost),
                RuleKind::Concurrency {
                    limit,
                    lease,
                    until_ms,
                } => invocation.arg(2).arg(limit).arg(lease).arg(until_ms),
                RuleKind::Budget { limit, ends_ms } => {
                    invocation.arg(3).arg(limit).arg(ends_ms).arg(0)
                }
            };
        }
        let mut connection = self.connection()?;
        let out: Vec<i64> = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(|e| StoreError(e.to_string()))?;
        if out.len() != 2 + rules.len() * 3 {
            return Err(StoreError(format!(
                "unexpected answer of {} numbers",
                out.len()
            )));
        }
        let denied = (out[0] == 0).then(|| (out[1] - 1).max(0) as usize);
        let states = out[2..]
            .chunks(3)
            .map(|s| RuleState {
                remaining: s[0].max(0) as u64,
                reset_ms: s[1].max(0) as u64,
                retry_after_ms: (s[2] >= 0).then_some(s[2] as u64),
            })
            .collect();
        Ok(Verdict { denied, states })
    }

    pub async fn settle(&self, now_ms: u64, charges: &[Charge]) -> Result<(), StoreError> {
        let script = SETTLE.get_or_init(|| redis::Script::new(include_str!("settle.lua")));
        let mut invocation = script.prepare_invoke();
        invocation.arg(now_ms);
        for charge in charges {
            match charge {
                Charge::Adjust {
                    key,
                    limit,
                    period_ms,
                    delta,
                } => invocation
                    .key(format!("{}{key}", self.prefix))
                    .arg(1)
                    .arg(limit)
                    .arg(period_ms)
                    .arg(delta),
                Charge::Release { key, lease } => invocation
                    .key(format!("{}{key}", self.prefix))
                    .arg(2)
                    .arg(0)
                    .arg(lease)
                    .arg(0),
                Charge::Spend {
                    key,
                    amount,
                    ends_ms,
                } => invocation
                    .key(format!("{}{key}", self.prefix))
                    .arg(3)
                    .arg(amount)
                    .arg(ends_ms)
                    .arg(0),
            };
        }
        let mut connection = self.connection()?;
        let _: i64 = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(|e| StoreError(e.to_string()))?;
        Ok(())
    }
}
