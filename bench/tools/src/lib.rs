//! Helpers shared by the mock backend and the load generator.

/// Nanoseconds of CLOCK_MONOTONIC: one clock for every process on the
/// machine, so a timestamp written by the mock can be compared with the time
/// the load generator reads it.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Raises the open-file limit to its hard maximum (thousands of sockets).
pub fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Width of the timestamps the mock writes into streamed content.
pub const STAMP_WIDTH: usize = 20;

/// Writes `n` as exactly [`STAMP_WIDTH`] zero-padded digits.
pub fn write_stamp(out: &mut [u8], mut n: u64) {
    for slot in out[..STAMP_WIDTH].iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// Reads the first run of [`STAMP_WIDTH`] digits after `marker` in `text`.
pub fn read_stamp(text: &[u8], marker: &[u8]) -> Option<u64> {
    let at = memchr::memmem::find(text, marker)? + marker.len();
    let digits = text.get(at..at + STAMP_WIDTH)?;
    let mut n = 0u64;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(d - b'0');
    }
    Some(n)
}

/// The marker that precedes a timestamp in streamed content: `t=`.
pub const STAMP_MARKER: &[u8] = b"t=";

/// Simple command-line flags: `--name value` pairs and `--switch`es.
pub struct Args {
    pairs: Vec<(String, Option<String>)>,
}

impl Args {
    pub fn parse(args: impl Iterator<Item = String>) -> Args {
        let args: Vec<String> = args.collect();
        let mut pairs = Vec::new();
        let mut i = 0;
        while i < args.len() {
            let name = args[i].trim_start_matches("--").to_owned();
            let value = args.get(i + 1).filter(|v| !v.starts_with("--")).cloned();
            i += if value.is_some() { 2 } else { 1 };
            pairs.push((name, value));
        }
        Args { pairs }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }

    pub fn has(&self, name: &str) -> bool {
        self.pairs.iter().any(|(n, _)| n == name)
    }

    pub fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        match self.get(name) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| {
                eprintln!("--{name}: not a number: {v}");
                std::process::exit(2)
            }),
        }
    }

    pub fn string(&self, name: &str, default: &str) -> String {
        self.get(name).unwrap_or(default).to_owned()
    }
}

/// Index just past the `\r\n\r\n` that ends an HTTP head, if it is in `buf`.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    memchr::memmem::find(buf, b"\r\n\r\n").map(|i| i + 4)
}

/// The value of header `name` (lower-case) in an HTTP head.
pub fn header<'a>(head: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    for line in head.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        if line[..colon].eq_ignore_ascii_case(name) {
            return Some(line[colon + 1..].trim_ascii());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip() {
        let mut buf = *b"x t=....................y";
        write_stamp(&mut buf[4..], 1_234_567_890_123);
        assert_eq!(read_stamp(&buf, STAMP_MARKER), Some(1_234_567_890_123));
    }

    #[test]
    fn headers_are_case_insensitive() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nX: y\r\n\r\n";
        assert_eq!(head_end(head), Some(head.len()));
        assert_eq!(header(head, b"content-length"), Some(&b"12"[..]));
        assert_eq!(header(head, b"z"), None);
    }
}
