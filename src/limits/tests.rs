use super::*;

#[test]
fn durations_read_like_openai_resets() {
    assert_eq!(go_duration(12), "12ms");
    assert_eq!(go_duration(1000), "1s");
    assert_eq!(go_duration(1500), "1.5s");
    assert_eq!(go_duration(360_000), "6m0s");
    assert_eq!(go_duration(3_723_000), "1h2m3s");
}

#[test]
fn calendar_periods_are_utc_days_and_months() {
    // 2026-11-25T13:43:12Z
    let now = 1_795_614_192_000;
    let (id, ends) = Period::Day.current(now);
    assert_eq!(id, "2026-11-25");
    assert_eq!(ends, 1_795_651_200_000, "2026-11-26T00:00:00Z");
    let (id, ends) = Period::Month.current(now);
    assert_eq!(id, "2026-11");
    assert_eq!(ends, 1_796_083_200_000, "2026-12-01T00:00:00Z");
    let (id, ends) = Period::Month.current(1_796_083_200_000 + 5);
    assert_eq!(id, "2026-12");
    assert_eq!(ends, 1_798_761_600_000, "2027-01-01T00:00:00Z");
    for day in [-719_468, 0, 11_016, 20_000, 60_000] {
        let (y, m, d) = civil_from_days(day);
        assert_eq!(days_from_civil(y, m, d), day);
    }
}

#[test]
fn prices_are_per_million_tokens() {
    let p = Price {
        prompt: 0.15,
        completion: 0.6,
    };
    assert_eq!(p.micros(Usage::new(1_000_000, 0)), 150_000);
    assert_eq!(p.micros(Usage::new(10, 10)), 8);
}

fn rate(key: &str, limit: u64, cost: u64) -> Rule {
    Rule {
        key: key.into(),
        kind: RuleKind::Rate {
            limit,
            period_ms: 60_000,
            cost,
        },
    }
}

#[test]
fn gcra_allows_a_burst_then_refills_smoothly() {
    let store = memory::MemoryStore::default();
    let t0 = 1_000_000;
    for i in 0..10 {
        let v = store.check(t0, &[rate("k", 10, 1)]);
        assert_eq!(v.denied, None, "request {i}");
        assert_eq!(v.states[0].remaining, 9 - i);
    }
    let v = store.check(t0, &[rate("k", 10, 1)]);
    assert_eq!(v.denied, Some(0));
    assert_eq!(v.states[0].retry_after_ms, Some(6_000));
    // One request's worth refills every 6 s.
    assert_eq!(store.check(t0 + 6_000, &[rate("k", 10, 1)]).denied, None);
    assert_eq!(store.check(t0 + 6_000, &[rate("k", 10, 1)]).denied, Some(0));
}

#[test]
fn a_denied_check_charges_nothing() {
    let store = memory::MemoryStore::default();
    let rules = [rate("a", 100, 1), rate("b", 1, 1)];
    assert_eq!(store.check(0, &rules).denied, None);
    assert_eq!(store.check(0, &rules).denied, Some(1));
    assert_eq!(
        store.check(0, &[rate("a", 100, 1)]).states[0].remaining,
        98,
        "the denied check left `a` alone"
    );
}

#[test]
fn a_request_larger_than_the_limit_never_fits() {
    let store = memory::MemoryStore::default();
    let v = store.check(0, &[rate("t", 100, 500)]);
    assert_eq!(v.denied, Some(0));
    assert_eq!(v.states[0].retry_after_ms, None);
}

#[test]
fn a_lease_outlives_the_longest_fallback_too() {
    let text = "\
providers:
  quick: { type: demo, timeouts: { total: 30s } }
  slow: { type: demo, timeouts: { total: 10m } }
models:
  a: { targets: [{ provider: quick }], fallbacks: [b] }
  b: { targets: [{ provider: slow }] }
";
    let snapshot =
        crate::config::load::load_str(text, &|_| None, &crate::registry::Shared::default())
            .unwrap_or_else(|problems| panic!("{problems:?}"));
    let a = snapshot.aliases.get_exact("a").unwrap();
    let b = snapshot.aliases.get_exact("b").unwrap();
    assert_eq!(lease_for(&snapshot, a), Duration::from_secs(660));
    assert_eq!(lease_for(&snapshot, b), Duration::from_secs(660));
}
