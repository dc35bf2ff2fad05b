//! The in-process store: the same rules as the Redis script, under a mutex.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{Charge, Rule, RuleKind, RuleState, Verdict};

#[derive(Debug, Default)]
pub struct MemoryStore {
    slots: Mutex<Slots>,
}

#[derive(Debug, Default)]
struct Slots {
    map: HashMap<Arc<str>, Slot>,
    /// When expired slots were last swept (ms).
    swept: u64,
}

#[derive(Debug)]
enum Slot {
    /// GCRA's theoretical arrival time, and the latest clock that wrote it
    /// (ms): a check whose clock reads earlier (read before a wait, or on
    /// another replica) counts as arriving at that latest time.
    Tat(f64, u64),
    /// Lease id → end (ms).
    Leases(HashMap<u64, u64>),
    /// Spent, until the period ends (ms).
    Spent(u64, u64),
}

impl Slot {
    fn expired(&self, now: u64) -> bool {
        match self {
            Slot::Tat(tat, _) => *tat <= now as f64,
            Slot::Leases(l) => l.values().all(|&until| until <= now),
            Slot::Spent(_, ends) => *ends <= now,
        }
    }
}

impl MemoryStore {
    pub fn check(&self, now: u64, rules: &[Rule]) -> Verdict {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if now.saturating_sub(slots.swept) > 60_000 {
            slots.map.retain(|_, s| !s.expired(now));
            slots.swept = now;
        }
        let mut denied = None;
        let mut states = Vec::with_capacity(rules.len());
        let mut writes: Vec<(usize, f64, u64)> = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            let mut state = RuleState::default();
            let mut deny = false;
            match &rule.kind {
                RuleKind::Rate {
                    limit,
                    period_ms,
                    cost,
                } => {
                    let (limit, period) = (*limit as f64, *period_ms as f64);
                    let interval = period / limit;
                    let (tat, seen) = match slots.map.get(&rule.key) {
                        Some(Slot::Tat(t, seen)) => (*t, now.max(*seen)),
                        _ => (0.0, now),
                    };
                    let nowf = seen as f64;
                    let tat = tat.max(nowf);
                    let new_tat = tat + *cost as f64 * interval;
                    if new_tat - nowf > period {
                        deny = true;
                        state.retry_after_ms =
                            (*cost as f64 <= limit).then_some((new_tat - nowf - period) as u64);
                        state.remaining = ((period - (tat - nowf)) / interval).floor() as u64;
                        state.reset_ms = (tat - nowf) as u64;
                    } else {
                        writes.push((i, new_tat, seen));
                        state.remaining = ((period - (new_tat - nowf)) / interval).floor() as u64;
                        state.reset_ms = (new_tat - nowf) as u64;
                    }
                }
                RuleKind::Concurrency { limit, .. } => {
                    let count = match slots.map.get_mut(&rule.key) {
                        Some(Slot::Leases(l)) => {
                            l.retain(|_, until| *until > now);
                            l.len() as u64
                        }
                        _ => 0,
                    };
                    if count >= *limit {
                        deny = true;
                        state.retry_after_ms = Some(1000);
                    } else {
                        writes.push((i, 0.0, now));
                        state.remaining = limit - count - 1;
                    }
                }
                RuleKind::Budget { limit, ends_ms } => {
                    let spent = match slots.map.get(&rule.key) {
                        Some(Slot::Spent(n, ends)) if *ends > now => *n,
                        _ => 0,
                    };
                    state.reset_ms = ends_ms.saturating_sub(now);
                    if spent >= *limit {
                        deny = true;
                        state.retry_after_ms = Some(ends_ms.saturating_sub(now));
                    } else {
                        state.remaining = limit - spent;
                    }
                }
            }
            if deny && denied.is_none() {
                denied = Some(i);
            }
            states.push(state);
        }
        if denied.is_none() {
            for (i, value, seen) in writes {
                let rule = &rules[i];
                match &rule.kind {
                    RuleKind::Rate { .. } => {
                        slots.map.insert(rule.key.clone(), Slot::Tat(value, seen));
                    }
                    RuleKind::Concurrency {
                        lease, until_ms, ..
                    } => {
                        let slot = slots
                            .map
                            .entry(rule.key.clone())
                            .or_insert_with(|| Slot::Leases(HashMap::new()));
                        if let Slot::Leases(l) = slot {
                            l.insert(*lease, *until_ms);
                        }
                    }
                    RuleKind::Budget { .. } => {}
                }
            }
        }
        Verdict { denied, states }
    }

    pub fn settle(&self, now: u64, charges: &[Charge]) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        for charge in charges {
            match charge {
                Charge::Adjust {
                    key,
                    limit,
                    period_ms,
                    delta,
                } => {
                    let interval = *period_ms as f64 / *limit as f64;
                    let (tat, seen) = match slots.map.get(key) {
                        Some(Slot::Tat(t, seen)) => (Some(*t), now.max(*seen)),
                        _ => (None, now),
                    };
                    let nowf = seen as f64;
                    let next = match tat {
                        Some(t) => t + *delta as f64 * interval,
                        None if *delta > 0 => nowf + *delta as f64 * interval,
                        None => continue,
                    };
                    if next > nowf {
                        slots.map.insert(key.clone(), Slot::Tat(next, seen));
                    } else {
                        slots.map.remove(key);
                    }
                }
                Charge::Release { key, lease } => {
                    if let Some(Slot::Leases(l)) = slots.map.get_mut(key) {
                        l.remove(lease);
                    }
                }
                Charge::Spend {
                    key,
                    amount,
                    ends_ms,
                } => {
                    let slot = slots
                        .map
                        .entry(key.clone())
                        .or_insert(Slot::Spent(0, *ends_ms));
                    if let Slot::Spent(n, _) = slot {
                        *n += amount;
                    }
                }
            }
        }
    }
}
