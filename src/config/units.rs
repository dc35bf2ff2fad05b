//! Durations (`5s`, `250ms`, `1m30s`) and sizes (`8MiB`, `512KB`, `1048576`).

use std::time::Duration;

/// Parses a duration with humantime's grammar; zero is allowed.
pub fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration like 5s, 250ms or 1m30s ({e})"))
}

/// Parses a byte size: a whole number with an optional unit.
/// `KiB`/`MiB`/`GiB` are powers of 1024, `KB`/`MB`/`GB` powers of 1000, `B` or no unit is bytes.
pub fn size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let bad = || format!("{text:?} is not a size like 8MiB, 512KiB or 1000000");
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "Ki" => 1 << 10,
        "MiB" | "Mi" => 1 << 20,
        "GiB" | "Gi" => 1 << 30,
        "KB" | "kB" | "K" | "k" => 1_000,
        "MB" | "M" => 1_000_000,
        "GB" | "G" => 1_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(factor).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(duration("1m30s").unwrap(), Duration::from_secs(90));
        assert!(duration("5 parsecs").is_err());
        assert!(duration("fast").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(size("8MiB").unwrap(), 8 << 20);
        assert_eq!(size("512KiB").unwrap(), 512 << 10);
        assert_eq!(size("1MB").unwrap(), 1_000_000);
        assert_eq!(size("1024").unwrap(), 1024);
        assert!(size("8 parsecs").is_err());
        assert!(size("MiB").is_err());
        assert!(size("99999999999999GiB").is_err());
    }
}
