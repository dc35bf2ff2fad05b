//! A streaming-aware load generator for the benchmark: HTTP/1.1 keep-alive
//! connections at a fixed concurrency, reading server-sent events as they
//! arrive. Prints one JSON object on stdout.
//!
//! `load stream`: each connection sends streamed chat requests back to back
//! until `--duration` seconds are up and measures, per stream, the time to
//! its first event and, per content chunk, the delay from the mock writing
//! it (the `t=<ns>` stamp in its text) to this process reading it, the
//! jitter of that delay between consecutive chunks, and chunks that arrived
//! in the same read as the previous one (held back somewhere on the way).
//!
//!     load stream --addr 127.0.0.1:18080 --model bench-stream --concurrency 64 --duration 5 [--warmup 1] [--stagger-us 300]
//!
//! `load rate`: whole (non-streamed) requests at a fixed rate, open loop,
//! spread over `--connections` keep-alive connections (tokio's timer wakes
//! them to the millisecond, so requests leave in small bursts). Comparing proxies' CPU at one request rate is fairer than at their own
//! maximum rates, where the cost of waking the other core differs.
//!
//!     load rate --addr 127.0.0.1:18080 --model bench --rate 5000 --duration 5
//!
//! `load hold`: opens `--streams` connections, starts a slow stream on each,
//! prints `{"ready": N}` once every stream has its first chunk, keeps them
//! open for `--hold` seconds (reading what arrives), then closes them all and
//! prints the summary. The harness samples the proxy's memory meanwhile.
//!
//!     load hold --addr 127.0.0.1:18080 --model bench-slow --streams 5000 --hold 20

use std::cell::RefCell;
use std::io::Write;
use std::rc::Rc;
use std::time::Duration;

use switchyard_bench_tools::{
    Args, STAMP_MARKER, head_end, header, now_ns, raise_fd_limit, read_stamp,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn main() {
    raise_fd_limit();
    let mut argv = std::env::args().skip(1);
    let mode = argv.next().unwrap_or_default();
    let args = Args::parse(argv);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    let summary = match mode.as_str() {
        "stream" => local.block_on(&runtime, stream_mode(&args)),
        "hold" => local.block_on(&runtime, hold_mode(&args)),
        "rate" => local.block_on(&runtime, rate_mode(&args)),
        _ => {
            eprintln!("usage: load stream|hold|rate --addr HOST:PORT --model M [...]");
            std::process::exit(2);
        }
    };
    println!("{summary}");
}

struct Target {
    addr: String,
    request: Vec<u8>,
}

fn target(args: &Args) -> Target {
    target_for(args, true)
}

fn target_for(args: &Args, stream: bool) -> Target {
    let addr = args.string("addr", "127.0.0.1:18080");
    let path = args.string("path", "/v1/chat/completions");
    let model = args.string("model", "mock-c50-i20");
    let body = format!(
        r#"{{"model":"{model}","messages":[{{"role":"system","content":"You are a helpful assistant."}},{{"role":"user","content":"Write a haiku about load balancers."}}],"max_tokens":64,"temperature":0.7{}}}"#,
        if stream {
            r#","stream":true,"stream_options":{"include_usage":true}"#
        } else {
            ""
        }
    );
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\naccept: text/event-stream\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes();
    Target { addr, request }
}

/// What one stream saw.
#[derive(Default)]
struct StreamStats {
    ttft_ns: Option<u64>,
    /// Per content chunk: read time minus the mock's stamp.
    delays: Vec<u64>,
    /// |delay(k) − delay(k−1)|: what the path added to the gap between chunks.
    jitter: Vec<u64>,
    /// Content chunks that arrived in the same read as the previous one.
    coalesced: u32,
    /// Content chunks that arrived later than `late_after` after being written.
    late: u32,
    chunks: u32,
    done: bool,
}

/// Reads one HTTP response carrying SSE, calling `on_first` at the first event.
struct Reader {
    raw: Vec<u8>,
    sse: Vec<u8>,
}

enum Framing {
    Length(usize),
    Chunked,
    Close,
}

impl Reader {
    fn new() -> Self {
        Reader {
            raw: Vec::with_capacity(16 * 1024),
            sse: Vec::with_capacity(16 * 1024),
        }
    }

    /// One exchange on `conn`. `Err` means the connection is unusable.
    async fn exchange(
        &mut self,
        conn: &mut TcpStream,
        request: &[u8],
        sent: u64,
        stats: &mut StreamStats,
        late_after: u64,
        mut on_first: impl FnMut(),
    ) -> Result<bool, String> {
        conn.write_all(request).await.map_err(|e| e.to_string())?;
        self.sse.clear();
        // Head.
        let end = loop {
            if let Some(end) = head_end(&self.raw) {
                break end;
            }
            self.read(conn).await?;
        };
        let head = self.raw[..end].to_vec();
        self.raw.drain(..end);
        let ok = head.starts_with(b"HTTP/1.1 200");
        let framing = if header(&head, b"transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case(b"chunked"))
        {
            Framing::Chunked
        } else if let Some(n) = header(&head, b"content-length")
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse().ok())
        {
            Framing::Length(n)
        } else {
            Framing::Close
        };
        let mut chunked = Chunked::Size;
        let mut remaining = match framing {
            Framing::Length(n) => n,
            _ => usize::MAX,
        };
        let mut last_delay: Option<u64> = None;
        loop {
            // Move what arrived into `sse`.
            let finished = match framing {
                Framing::Chunked => chunked.decode(&mut self.raw, &mut self.sse)?,
                Framing::Length(_) | Framing::Close => {
                    let take = self.raw.len().min(remaining);
                    self.sse.extend_from_slice(&self.raw[..take]);
                    self.raw.drain(..take);
                    remaining -= take;
                    remaining == 0
                }
            };
            let now = now_ns();
            let mut content_in_read = 0;
            while let Some(at) = memchr::memmem::find(&self.sse, b"\n\n") {
                let event = &self.sse[..at];
                if stats.ttft_ns.is_none() && ok {
                    stats.ttft_ns = Some(now.saturating_sub(sent));
                    on_first();
                }
                if memchr::memmem::find(event, b"data: [DONE]").is_some() {
                    stats.done = true;
                } else if let Some(stamp) = read_stamp(event, STAMP_MARKER) {
                    let delay = now.saturating_sub(stamp);
                    stats.delays.push(delay);
                    if delay > late_after {
                        stats.late += 1;
                    }
                    if let Some(last) = last_delay {
                        stats.jitter.push(delay.abs_diff(last));
                    }
                    last_delay = Some(delay);
                    stats.chunks += 1;
                    content_in_read += 1;
                    if content_in_read > 1 {
                        stats.coalesced += 1;
                    }
                }
                self.sse.drain(..at + 2);
            }
            if finished {
                return Ok(ok && !matches!(framing, Framing::Close));
            }
            match self.read(conn).await {
                Ok(()) => {}
                Err(_) if matches!(framing, Framing::Close) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
    }

    async fn read(&mut self, conn: &mut TcpStream) -> Result<(), String> {
        self.raw.reserve(16 * 1024);
        match conn.read_buf(&mut self.raw).await {
            Ok(0) => Err("connection closed".into()),
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Incremental chunked transfer decoding.
enum Chunked {
    Size,
    Data(usize),
    Crlf,
    Trailer,
}

impl Chunked {
    /// Moves decoded bytes from `raw` to `out`; true at the end of the body.
    fn decode(&mut self, raw: &mut Vec<u8>, out: &mut Vec<u8>) -> Result<bool, String> {
        let mut pos = 0;
        let result = loop {
            match self {
                Chunked::Size => {
                    let Some(nl) = memchr::memmem::find(&raw[pos..], b"\r\n") else {
                        break Ok(false);
                    };
                    let line = &raw[pos..pos + nl];
                    let hex = line.split(|&b| b == b';').next().unwrap_or(b"");
                    let size = usize::from_str_radix(
                        std::str::from_utf8(hex).map_err(|e| e.to_string())?.trim(),
                        16,
                    )
                    .map_err(|e| format!("bad chunk size: {e}"))?;
                    pos += nl + 2;
                    *self = if size == 0 {
                        Chunked::Trailer
                    } else {
                        Chunked::Data(size)
                    };
                }
                Chunked::Data(n) => {
                    let take = (*n).min(raw.len() - pos);
                    if take == 0 {
                        break Ok(false);
                    }
                    out.extend_from_slice(&raw[pos..pos + take]);
                    pos += take;
                    *n -= take;
                    if *n == 0 {
                        *self = Chunked::Crlf;
                    }
                }
                Chunked::Crlf => {
                    if raw.len() - pos < 2 {
                        break Ok(false);
                    }
                    pos += 2;
                    *self = Chunked::Size;
                }
                Chunked::Trailer => {
                    let Some(nl) = memchr::memmem::find(&raw[pos..], b"\r\n") else {
                        break Ok(false);
                    };
                    pos += nl + 2;
                    if nl == 0 {
                        *self = Chunked::Size;
                        break Ok(true);
                    }
                }
            }
        };
        raw.drain(..pos);
        result
    }
}

#[derive(Default)]
struct Totals {
    streams: u64,
    errors: u64,
    incomplete: u64,
    ttft: Vec<u64>,
    delays: Vec<u64>,
    jitter: Vec<u64>,
    coalesced: u64,
    late: u64,
    chunks: u64,
    durations: Vec<u64>,
    first_error: Option<String>,
}

async fn stream_mode(args: &Args) -> String {
    let target = Rc::new(target(args));
    let concurrency: usize = args.num("concurrency", 64);
    let duration = Duration::from_secs_f64(args.num("duration", 5.0));
    let warmup = Duration::from_secs_f64(args.num("warmup", 1.0));
    // Connection i starts i × stagger later, so that chunks of different
    // streams do not all fall due in the same instant.
    let stagger = Duration::from_micros(args.num("stagger-us", 0));
    // A chunk that arrives more than this after the mock wrote it was held
    // back (by default: one 20 ms interval, i.e. until the next chunk).
    let late_after: u64 = args.num::<u64>("late-after-us", 20_000) * 1000;
    let started = now_ns();
    let record_from = started + warmup.as_nanos() as u64;
    let stop_at = record_from + duration.as_nanos() as u64;
    let totals = Rc::new(RefCell::new(Totals::default()));
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let target = target.clone();
        let totals = totals.clone();
        tasks.push(tokio::task::spawn_local(async move {
            tokio::time::sleep(stagger * i as u32).await;
            let mut reader = Reader::new();
            let mut conn: Option<TcpStream> = None;
            while now_ns() < stop_at {
                if conn.is_none() {
                    match TcpStream::connect(&target.addr).await {
                        Ok(c) => {
                            let _ = c.set_nodelay(true);
                            reader.raw.clear();
                            conn = Some(c);
                        }
                        Err(e) => {
                            let mut t = totals.borrow_mut();
                            t.errors += 1;
                            t.first_error.get_or_insert(format!("connect: {e}"));
                            drop(t);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    }
                }
                let c = conn.as_mut().expect("connected");
                let sent = now_ns();
                let mut stats = StreamStats::default();
                let result = reader
                    .exchange(c, &target.request, sent, &mut stats, late_after, || {})
                    .await;
                let ended = now_ns();
                let mut t = totals.borrow_mut();
                let record = sent >= record_from;
                match result {
                    Ok(true) => {}
                    Ok(false) => {
                        conn = None;
                        t.errors += 1;
                        t.first_error
                            .get_or_insert("a response that was not 200".into());
                    }
                    Err(e) => {
                        conn = None;
                        t.errors += 1;
                        t.first_error.get_or_insert(e);
                    }
                }
                if !record {
                    continue;
                }
                t.streams += 1;
                if !stats.done {
                    t.incomplete += 1;
                }
                if let Some(ttft) = stats.ttft_ns {
                    t.ttft.push(ttft);
                }
                t.delays.extend_from_slice(&stats.delays);
                t.jitter.extend_from_slice(&stats.jitter);
                t.coalesced += u64::from(stats.coalesced);
                t.late += u64::from(stats.late);
                t.chunks += u64::from(stats.chunks);
                t.durations.push(ended - sent);
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = (now_ns() - record_from) as f64 / 1e9;
    let mut guard = totals.borrow_mut();
    let t = &mut *guard;
    let mut fields = vec![
        ("streams".to_owned(), t.streams.to_string()),
        ("errors".to_owned(), t.errors.to_string()),
        ("incomplete".to_owned(), t.incomplete.to_string()),
        ("elapsed_s".to_owned(), format!("{elapsed:.3}")),
        ("chunks".to_owned(), t.chunks.to_string()),
        ("coalesced_chunks".to_owned(), t.coalesced.to_string()),
        ("late_chunks".to_owned(), t.late.to_string()),
    ];
    for (name, values) in [
        ("ttft", &mut t.ttft),
        ("chunk_delay", &mut t.delays),
        ("chunk_jitter", &mut t.jitter),
        ("stream_duration", &mut t.durations),
    ] {
        percentiles(name, values, &mut fields);
    }
    if let Some(e) = &t.first_error {
        fields.push(("first_error".into(), format!("{e:?}")));
    }
    json(&fields)
}

fn percentiles(name: &str, values: &mut [u64], fields: &mut Vec<(String, String)>) {
    values.sort_unstable();
    let pick = |q: f64| -> f64 {
        if values.is_empty() {
            return 0.0;
        }
        let i = ((values.len() as f64 - 1.0) * q).round() as usize;
        values[i] as f64 / 1000.0
    };
    let mean = if values.is_empty() {
        0.0
    } else {
        values.iter().map(|&v| v as f64).sum::<f64>() / values.len() as f64 / 1000.0
    };
    for (suffix, v) in [
        ("p50_us", pick(0.5)),
        ("p90_us", pick(0.9)),
        ("p99_us", pick(0.99)),
        ("max_us", pick(1.0)),
        ("mean_us", mean),
    ] {
        fields.push((format!("{name}_{suffix}"), format!("{v:.1}")));
    }
}

fn json(fields: &[(String, String)]) -> String {
    let inner: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    format!("{{{}}}", inner.join(","))
}

async fn rate_mode(args: &Args) -> String {
    let target = Rc::new(target_for(args, false));
    let rate: f64 = args.num("rate", 5000.0);
    let connections: usize = args.num("connections", 16);
    let duration = Duration::from_secs_f64(args.num("duration", 5.0));
    let warmup = Duration::from_secs_f64(args.num("warmup", 1.0));
    let t0 = now_ns() + 10_000_000;
    let record_from = t0 + warmup.as_nanos() as u64;
    let stop_at = record_from + duration.as_nanos() as u64;
    let every = (1e9 * connections as f64 / rate) as u64;
    let totals = Rc::new(RefCell::new(Totals::default()));
    let mut tasks = Vec::new();
    for k in 0..connections {
        let target = target.clone();
        let totals = totals.clone();
        tasks.push(tokio::task::spawn_local(async move {
            let mut reader = Reader::new();
            let mut conn: Option<TcpStream> = None;
            let mut due = t0 + (1e9 * k as f64 / rate) as u64;
            while due < stop_at {
                let now = now_ns();
                if due > now {
                    tokio::time::sleep(Duration::from_nanos(due - now)).await;
                }
                if conn.is_none() {
                    match TcpStream::connect(&target.addr).await {
                        Ok(c) => {
                            let _ = c.set_nodelay(true);
                            reader.raw.clear();
                            conn = Some(c);
                        }
                        Err(e) => {
                            let mut t = totals.borrow_mut();
                            t.errors += 1;
                            t.first_error.get_or_insert(format!("connect: {e}"));
                            due += every;
                            continue;
                        }
                    }
                }
                let c = conn.as_mut().expect("connected");
                let mut stats = StreamStats::default();
                let sent = now_ns();
                let result = reader
                    .exchange(c, &target.request, sent, &mut stats, u64::MAX, || {})
                    .await;
                let ended = now_ns();
                let mut t = totals.borrow_mut();
                match result {
                    Ok(true) => {}
                    Ok(false) => {
                        conn = None;
                        t.errors += 1;
                        t.first_error
                            .get_or_insert("a response that was not 200".into());
                    }
                    Err(e) => {
                        conn = None;
                        t.errors += 1;
                        t.first_error.get_or_insert(e);
                    }
                }
                if due >= record_from {
                    t.streams += 1;
                    t.durations.push(ended - sent);
                }
                due += every;
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let mut guard = totals.borrow_mut();
    let t = &mut *guard;
    let seconds = duration.as_secs_f64();
    let mut fields = vec![
        ("requests".to_owned(), t.streams.to_string()),
        ("errors".to_owned(), t.errors.to_string()),
        (
            "rate".to_owned(),
            format!("{:.1}", t.streams as f64 / seconds),
        ),
    ];
    percentiles("latency", &mut t.durations, &mut fields);
    if let Some(e) = &t.first_error {
        fields.push(("first_error".into(), format!("{e:?}")));
    }
    json(&fields)
}

async fn hold_mode(args: &Args) -> String {
    let target = Rc::new(target(args));
    let streams: usize = args.num("streams", 5000);
    let hold = Duration::from_secs_f64(args.num("hold", 20.0));
    let ready_timeout = Duration::from_secs_f64(args.num("ready-timeout", 60.0));
    let batch: usize = args.num("connect-batch", 256);
    let ready = Rc::new(RefCell::new(0usize));
    let failed = Rc::new(RefCell::new((0usize, None::<String>)));
    let gate = Rc::new(tokio::sync::Semaphore::new(batch));
    let started = now_ns();
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let target = target.clone();
        let ready = ready.clone();
        let failed = failed.clone();
        let gate = gate.clone();
        tasks.push(tokio::task::spawn_local(async move {
            let permit = gate.acquire().await.expect("open");
            let mut conn = match TcpStream::connect(&target.addr).await {
                Ok(c) => c,
                Err(e) => {
                    let mut f = failed.borrow_mut();
                    f.0 += 1;
                    f.1.get_or_insert(format!("connect: {e}"));
                    return;
                }
            };
            let _ = conn.set_nodelay(true);
            let mut permit = Some(permit);
            let mut reader = Reader::new();
            let mut stats = StreamStats::default();
            let result = reader
                .exchange(
                    &mut conn,
                    &target.request,
                    now_ns(),
                    &mut stats,
                    u64::MAX,
                    || {
                        *ready.borrow_mut() += 1;
                        permit.take();
                    },
                )
                .await;
            if let Err(e) = result {
                let mut f = failed.borrow_mut();
                f.0 += 1;
                f.1.get_or_insert(e);
            }
        }));
    }
    let deadline = tokio::time::Instant::now() + ready_timeout;
    loop {
        let (r, f) = (*ready.borrow(), failed.borrow().0);
        if r + f >= streams || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ramp = (now_ns() - started) as f64 / 1e9;
    println!(
        "{{\"ready\":{},\"failed\":{},\"ramp_s\":{ramp:.3}}}",
        ready.borrow(),
        failed.borrow().0
    );
    let _ = std::io::stdout().flush();
    tokio::time::sleep(hold).await;
    let still_open = tasks.iter().filter(|t| !t.is_finished()).count();
    for t in &tasks {
        t.abort();
    }
    let f = failed.borrow();
    let mut fields = vec![
        ("streams".to_owned(), streams.to_string()),
        ("ready".to_owned(), ready.borrow().to_string()),
        ("failed".to_owned(), f.0.to_string()),
        ("open_at_end".to_owned(), still_open.to_string()),
        ("ramp_s".to_owned(), format!("{ramp:.3}")),
    ];
    if let Some(e) = &f.1 {
        fields.push(("first_error".into(), format!("{e:?}")));
    }
    json(&fields)
}
