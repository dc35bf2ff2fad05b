//! A small HTTP client for tests: whole responses, and streams read frame by frame.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{Client as Legacy, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;

#[derive(Clone)]
pub struct Client {
    inner: Legacy<HttpConnector, Full<Bytes>>,
}

/// A whole response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `data:` payloads of an SSE body, `[DONE]` included.
    pub fn events(&self) -> Vec<String> {
        sse_data(&self.text())
    }

    /// The JSON chunks of an SSE body, after checking it ends with `[DONE]`.
    pub fn chunks(&self) -> Vec<serde_json::Value> {
        chunks_of(&self.events())
    }

    /// Asserts the status, the OpenAI error shape, its type and code.
    pub fn assert_error(&self, status: u16, kind: &str, code: Option<&str>) {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(self.header("content-type"), Some("application/json"));
        assert!(self.header("x-request-id").is_some());
        let (t, c) = self.error();
        assert_eq!(t, kind, "{}", self.text());
        assert_eq!(c.as_deref(), code, "{}", self.text());
    }

    /// Asserts the OpenAI error shape and returns (type, code).
    pub fn error(&self) -> (String, Option<String>) {
        let v = self.json();
        let e = &v["error"];
        assert!(e["message"].is_string(), "no error.message in {v}");
        assert!(e.get("param").is_some(), "no error.param in {v}");
        assert!(e.get("code").is_some(), "no error.code in {v}");
        (
            e["type"].as_str().expect("error.type").to_owned(),
            e["code"].as_str().map(str::to_owned),
        )
    }
}

/// The JSON chunks of SSE events, after checking the last is `[DONE]`.
pub fn chunks_of(events: &[String]) -> Vec<serde_json::Value> {
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap_or_else(|err| panic!("{err}: {e}")))
        .collect()
}

/// The streamed text: every chunk's `delta.content`, in order.
pub fn streamed_content(chunks: &[serde_json::Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

/// `data:` payloads of SSE text.
pub fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|event| {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| {
                    l.strip_prefix("data:")
                        .map(|d| d.strip_prefix(' ').unwrap_or(d))
                })
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

impl Client {
    pub fn new() -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        Client {
            inner: Legacy::builder(TokioExecutor::new()).build(http),
        }
    }

    /// HTTP/2 without TLS, by prior knowledge (h2c).
    pub fn h2c() -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        Client {
            inner: Legacy::builder(TokioExecutor::new())
                .http2_only(true)
                .build(http),
        }
    }

    fn request(
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(body.into()));
        *req.method_mut() = method;
        *req.uri_mut() = url.parse().unwrap();
        req.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        for (k, v) in headers {
            req.headers_mut().append(
                http::HeaderName::try_from(*k).unwrap(),
                http::HeaderValue::try_from(*v).unwrap(),
            );
        }
        req
    }

    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        let response = tokio::time::timeout(
            Duration::from_secs(30),
            self.inner
                .request(Self::request(method, url, headers, body)),
        )
        .await
        .expect("a response within 30 s")
        .expect("a response");
        let (head, body) = response.into_parts();
        let body = tokio::time::timeout(Duration::from_secs(30), body.collect())
            .await
            .expect("the body within 30 s")
            .expect("a whole body")
            .to_bytes();
        Reply {
            status: head.status,
            version: head.version,
            headers: head.headers,
            body,
        }
    }

    pub async fn post(&self, url: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Reply {
        self.send(Method::POST, url, headers, body).await
    }

    pub async fn get(&self, url: &str, headers: &[(&str, &str)]) -> Reply {
        self.send(Method::GET, url, headers, Bytes::new()).await
    }

    /// Sends a request and returns as soon as the head arrives.
    pub async fn open(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Stream {
        let response = tokio::time::timeout(
            Duration::from_secs(30),
            self.inner
                .request(Self::request(Method::POST, url, headers, body)),
        )
        .await
        .expect("a response within 30 s")
        .expect("a response");
        let (head, body) = response.into_parts();
        Stream {
            status: head.status,
            headers: head.headers,
            body,
        }
    }
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

/// A response whose body is read frame by frame.
pub struct Stream {
    pub status: StatusCode,
    pub headers: HeaderMap,
    body: Incoming,
}

impl Stream {
    /// The next data frame, or `None` at the end (30 s at most).
    pub async fn next(&mut self) -> Option<Bytes> {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(30), self.body.frame())
                .await
                .expect("a frame within 30 s")?
                .ok()?;
            if let Ok(data) = frame.into_data() {
                return Some(data);
            }
        }
    }

    /// Reads until the body contains `needle`; returns everything read.
    pub async fn read_until(&mut self, needle: &str) -> String {
        let mut text = String::new();
        while !text.contains(needle) {
            match self.next().await {
                Some(b) => text.push_str(&String::from_utf8_lossy(&b)),
                None => panic!("the stream ended before {needle:?}; got {text:?}"),
            }
        }
        text
    }

    /// Reads the rest of the body.
    pub async fn rest(mut self) -> String {
        let mut text = String::new();
        while let Some(b) = self.next().await {
            text.push_str(&String::from_utf8_lossy(&b));
        }
        text
    }
}
