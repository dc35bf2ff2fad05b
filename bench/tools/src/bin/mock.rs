//! A fast mock LLM backend for the benchmark. It must never be the
//! bottleneck: HTTP/1.1 keep-alive over raw tokio sockets, every whole
//! response rendered once at start-up, multi-threaded.
//!
//! Routes:
//! - `POST /v1/chat/completions`: OpenAI chat, whole or SSE (`"stream": true`);
//! - `POST /v1/messages`: the Anthropic Messages API, whole or SSE;
//! - `GET /v1/models`, `GET /health`.
//!
//! A stream sends its role chunk and first content chunk at once, then one
//! content chunk every `interval`, then the finish (and usage) events one
//! interval after the last content chunk. Each content chunk's text is
//! `t=<20 digits> `: CLOCK_MONOTONIC nanoseconds when it was written, which
//! the load generator reads back to measure what a proxy adds per chunk.
//! The model name may carry the stream's shape: `…c<chunks>-i<ms>…`
//! (`mock-c50-i20`); otherwise `--chunks` and `--interval-ms` apply.
//!
//!     mock --listen 127.0.0.1:18001 [--threads N] [--chunks 50] [--interval-ms 20]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use switchyard_bench_tools::{
    Args, STAMP_MARKER, head_end, header, now_ns, raise_fd_limit, write_stamp,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

const TEXT: &str = "Packets queue and wait,\\nthe balancer hums softly,\\nevery path is short.";

struct Canned {
    openai_whole: Vec<u8>,
    anthropic_whole: Vec<u8>,
    models: Vec<u8>,
    health: Vec<u8>,
    not_found: Vec<u8>,
    bad_request: Vec<u8>,
    openai_stream: StreamTemplate,
    anthropic_stream: StreamTemplate,
    default_chunks: u32,
    default_interval: Duration,
}

const SSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";

fn whole(status: &str, content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn canned(chunks: u32, interval: Duration) -> Canned {
    let openai = format!(
        r#"{{"id":"chatcmpl-bench0001","object":"chat.completion","created":1760000000,"model":"mock-model","system_fingerprint":"fp_bench","choices":[{{"index":0,"message":{{"role":"assistant","content":"{TEXT}","refusal":null,"annotations":[]}},"logprobs":null,"finish_reason":"stop"}}],"usage":{{"prompt_tokens":24,"completion_tokens":19,"total_tokens":43,"prompt_tokens_details":{{"cached_tokens":0}},"completion_tokens_details":{{"reasoning_tokens":0}}}}}}"#
    );
    let anthropic = format!(
        r#"{{"id":"msg_bench0001","type":"message","role":"assistant","model":"mock-model","content":[{{"type":"text","text":"{TEXT}"}}],"stop_reason":"end_turn","stop_sequence":null,"usage":{{"input_tokens":24,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":19,"service_tier":"standard"}}}}"#
    );
    Canned {
        openai_whole: whole("200 OK", "application/json", &openai),
        anthropic_whole: whole("200 OK", "application/json", &anthropic),
        models: whole(
            "200 OK",
            "application/json",
            r#"{"object":"list","data":[{"id":"mock-model","object":"model","created":1760000000,"owned_by":"bench"}]}"#,
        ),
        health: whole("200 OK", "application/json", r#"{"status":"ok"}"#),
        not_found: whole(
            "404 Not Found",
            "application/json",
            r#"{"error":{"message":"no such route","type":"invalid_request_error","param":null,"code":null}}"#,
        ),
        bad_request: whole(
            "400 Bad Request",
            "application/json",
            r#"{"error":{"message":"bad request","type":"invalid_request_error","param":null,"code":null}}"#,
        ),
        openai_stream: openai_stream(),
        anthropic_stream: anthropic_stream(),
        default_chunks: chunks,
        default_interval: interval,
    }
}

/// The events of one stream, as SSE payloads (before chunked framing).
struct StreamTemplate {
    /// Sent once, at the start, before the first content chunk.
    start: Vec<u8>,
    /// One content chunk; its stamp goes at `stamp_at`.
    content: Vec<u8>,
    stamp_at: usize,
    /// Sent after the last content chunk.
    end: Vec<u8>,
}

fn openai_stream() -> StreamTemplate {
    let head = r#"{"id":"chatcmpl-bench0001","object":"chat.completion.chunk","created":1760000000,"model":"mock-model","system_fingerprint":"fp_bench","choices":"#;
    let start = format!(
        "data: {head}[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"\"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
    );
    let content = format!(
        "data: {head}[{{\"index\":0,\"delta\":{{\"content\":\"t=00000000000000000000 \"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
    );
    let end = format!(
        "data: {head}[{{\"index\":0,\"delta\":{{}},\"logprobs\":null,\"finish_reason\":\"stop\"}}]}}\n\ndata: {head}[],\"usage\":{{\"prompt_tokens\":24,\"completion_tokens\":50,\"total_tokens\":74}}}}\n\ndata: [DONE]\n\n"
    );
    template(start, content, end)
}

fn anthropic_stream() -> StreamTemplate {
    let start = concat!(
        "event: message_start\n",
        r#"data: {"type":"message_start","message":{"id":"msg_bench0001","type":"message","role":"assistant","model":"mock-model","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":24,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1}}}"#,
        "\n\nevent: content_block_start\n",
        r#"data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        "\n\n"
    )
    .to_owned();
    let content = concat!(
        "event: content_block_delta\n",
        r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"t=00000000000000000000 "}}"#,
        "\n\n"
    )
    .to_owned();
    let end = concat!(
        "event: content_block_stop\n",
        r#"data: {"type":"content_block_stop","index":0}"#,
        "\n\nevent: message_delta\n",
        r#"data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":50}}"#,
        "\n\nevent: message_stop\n",
        r#"data: {"type":"message_stop"}"#,
        "\n\n"
    )
    .to_owned();
    template(start, content, end)
}

fn template(start: String, content: String, end: String) -> StreamTemplate {
    let content = content.into_bytes();
    let stamp_at =
        memchr::memmem::find(&content, STAMP_MARKER).expect("marker") + STAMP_MARKER.len();
    StreamTemplate {
        start: start.into_bytes(),
        content,
        stamp_at,
        end: end.into_bytes(),
    }
}

/// Appends `payload` as one chunk of chunked transfer encoding.
fn chunk(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(format!("{:x}\r\n", payload.len()).as_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

fn main() {
    raise_fd_limit();
    let args = Args::parse(std::env::args().skip(1));
    let listen: SocketAddr = args
        .string("listen", "127.0.0.1:18001")
        .parse()
        .expect("--listen host:port");
    let threads = args.num(
        "threads",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    let canned = Arc::new(canned(
        args.num("chunks", 50),
        Duration::from_millis(args.num("interval-ms", 20)),
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen).await.expect("bind");
        eprintln!("mock listening on {listen} ({threads} threads)");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let canned = canned.clone();
            tokio::spawn(async move {
                let _ = connection(stream, &canned).await;
            });
        }
    });
}

async fn connection(mut stream: TcpStream, canned: &Canned) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut scratch = Vec::new();
    loop {
        // The head.
        let end = loop {
            if let Some(end) = head_end(&buf) {
                break end;
            }
            if buf.len() > 1 << 20 {
                return Ok(());
            }
            if read_more(&mut stream, &mut buf).await? == 0 {
                return Ok(());
            }
        };
        let head = &buf[..end];
        let length: usize = header(head, b"content-length")
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let line_end = memchr::memchr(b'\r', head).unwrap_or(0);
        let line = String::from_utf8_lossy(&head[..line_end]).into_owned();
        // The body.
        while buf.len() < end + length {
            if read_more(&mut stream, &mut buf).await? == 0 {
                return Ok(());
            }
        }
        let body = &buf[end..end + length];
        let mut parts = line.split(' ');
        let method = parts.next().unwrap_or("");
        let path = parts.next().unwrap_or("");
        let path = path.split('?').next().unwrap_or("");
        let route = match (method, path) {
            ("POST", "/v1/chat/completions") => Route::OpenAi,
            ("POST", "/v1/messages") => Route::Anthropic,
            ("GET", "/v1/models") => Route::Canned(&canned.models),
            ("GET", "/health" | "/healthz") => Route::Canned(&canned.health),
            _ => Route::Canned(&canned.not_found),
        };
        let stream_shape = match route {
            Route::OpenAi | Route::Anthropic if streaming(body) => {
                let (chunks, interval) =
                    shape(body).unwrap_or((canned.default_chunks, canned.default_interval));
                Some((chunks, interval))
            }
            _ => None,
        };
        let route = match route {
            Route::OpenAi | Route::Anthropic if body.first() != Some(&b'{') => {
                Route::Canned(&canned.bad_request)
            }
            r => r,
        };
        buf.drain(..end + length);
        match (route, stream_shape) {
            (Route::Canned(bytes), _) => stream.write_all(bytes).await?,
            (Route::OpenAi, None) => stream.write_all(&canned.openai_whole).await?,
            (Route::Anthropic, None) => stream.write_all(&canned.anthropic_whole).await?,
            (Route::OpenAi, Some((n, every))) => {
                send_stream(&mut stream, &mut scratch, &canned.openai_stream, n, every).await?
            }
            (Route::Anthropic, Some((n, every))) => {
                send_stream(
                    &mut stream,
                    &mut scratch,
                    &canned.anthropic_stream,
                    n,
                    every,
                )
                .await?
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Route<'a> {
    OpenAi,
    Anthropic,
    Canned(&'a [u8]),
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    buf.reserve(8192);
    stream.read_buf(buf).await
}

async fn send_stream(
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    t: &StreamTemplate,
    chunks: u32,
    every: Duration,
) -> std::io::Result<()> {
    let started = Instant::now();
    let mut content = t.content.clone();
    out.clear();
    out.extend_from_slice(SSE_HEAD);
    chunk(out, &t.start);
    for i in 0..chunks {
        if i > 0 {
            tokio::time::sleep_until(started + every * i).await;
        }
        write_stamp(&mut content[t.stamp_at..], now_ns());
        chunk(out, &content);
        stream.write_all(out).await?;
        out.clear();
    }
    tokio::time::sleep_until(started + every * chunks).await;
    chunk(out, &t.end);
    out.extend_from_slice(b"0\r\n\r\n");
    stream.write_all(out).await?;
    out.clear();
    Ok(())
}

/// Whether a JSON request body has `"stream": true`.
fn streaming(body: &[u8]) -> bool {
    let Some(at) = memchr::memmem::find(body, b"\"stream\"") else {
        return false;
    };
    let rest = body[at + 8..].trim_ascii_start();
    let Some(rest) = rest.strip_prefix(b":") else {
        return false;
    };
    rest.trim_ascii_start().starts_with(b"true")
}

/// `(chunks, interval)` from a model name holding `c<N>-i<MS>`.
fn shape(body: &[u8]) -> Option<(u32, Duration)> {
    let at = memchr::memmem::find(body, b"\"model\"")?;
    let rest = &body[at + 7..];
    let open = memchr::memchr(b'"', rest)? + 1;
    let close = open + memchr::memchr(b'"', &rest[open..])?;
    let model = std::str::from_utf8(&rest[open..close]).ok()?;
    let mut n = None;
    let mut ms = None;
    for part in model.split(['-', '/', ':']) {
        if let Some(v) = part.strip_prefix('c').and_then(|v| v.parse().ok()) {
            n = Some(v);
        } else if let Some(v) = part.strip_prefix('i').and_then(|v| v.parse().ok()) {
            ms = Some(v);
        }
    }
    Some((n?, Duration::from_millis(ms?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stream_flag_and_shape() {
        assert!(streaming(br#"{"model":"m","stream" : true}"#));
        assert!(!streaming(br#"{"model":"m","stream":false}"#));
        assert!(!streaming(br#"{"model":"m"}"#));
        assert_eq!(
            shape(br#"{"model":"mock-c50-i20","stream":true}"#),
            Some((50, Duration::from_millis(20)))
        );
        assert_eq!(shape(br#"{"model":"mock-model"}"#), None);
    }

    #[test]
    fn templates_hold_a_stamp() {
        for t in [openai_stream(), anthropic_stream()] {
            assert_eq!(&t.content[t.stamp_at - 2..t.stamp_at], STAMP_MARKER);
        }
    }
}
