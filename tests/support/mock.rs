//! A scripted mock backend on a loopback port. It records every request and
//! answers with a [`Plan`]: a whole body, or chunks sent step by step
//! (waiting on a signal from the test, sleeping, or hanging forever).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

/// One request the mock received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One step of a chunked body.
#[derive(Clone)]
pub enum Step {
    Send(Bytes),
    Wait(Arc<Notify>),
    Sleep(Duration),
    Hang,
}

/// How to answer.
pub struct Plan {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub steps: Vec<Step>,
}

impl Plan {
    pub fn json(status: u16, body: Value) -> Plan {
        Plan {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            steps: vec![Step::Send(Bytes::from(body.to_string()))],
        }
    }

    pub fn text(status: u16, body: &str) -> Plan {
        Plan {
            status,
            headers: vec![("content-type".into(), "text/plain".into())],
            steps: vec![Step::Send(Bytes::copy_from_slice(body.as_bytes()))],
        }
    }

    /// An SSE body from steps.
    pub fn sse(steps: Vec<Step>) -> Plan {
        Plan {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            steps,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Plan {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// `data: <json>\n\n` as a step.
pub fn event(json: &Value) -> Step {
    Step::Send(Bytes::from(format!("data: {json}\n\n")))
}

pub fn done() -> Step {
    Step::Send(Bytes::from_static(b"data: [DONE]\n\n"))
}

/// An OpenAI stream held open: `first` at once, then, once `gate` is
/// notified, `rest` with the finish and `[DONE]`.
pub fn held_stream(first: &str, gate: &Arc<Notify>, rest: &str) -> Plan {
    Plan::sse(vec![
        event(&chunk(
            "m",
            json!({"role": "assistant", "content": first}),
            None,
        )),
        Step::Wait(gate.clone()),
        event(&chunk("m", json!({"content": rest}), Some("stop"))),
        done(),
    ])
}

/// A chat chunk of an OpenAI stream.
pub fn chunk(model: &str, delta: Value, finish: Option<&str>) -> Value {
    json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_760_000_000u64,
           "model": model, "system_fingerprint": "fp_mock",
           "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
}

type Handler = Arc<dyn Fn(&Recorded) -> Plan + Send + Sync>;

struct State {
    requests: Mutex<Vec<Recorded>>,
    handler: Mutex<Handler>,
    connections: AtomicUsize,
    /// Bodies dropped before their last step: the gateway hung up.
    cut: watch::Sender<usize>,
}

pub struct Mock {
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl Mock {
    /// A mock OpenAI-compatible server answering with [`openai`].
    pub async fn openai() -> Mock {
        Mock::start(openai).await
    }

    pub async fn start(handler: impl Fn(&Recorded) -> Plan + Send + Sync + 'static) -> Mock {
        Mock::serve_with(handler, None).await
    }

    /// The same mock behind TLS with this server config.
    pub async fn start_tls(
        handler: impl Fn(&Recorded) -> Plan + Send + Sync + 'static,
        tls: Arc<tokio_rustls::rustls::ServerConfig>,
    ) -> Mock {
        Mock::serve_with(handler, Some(tokio_rustls::TlsAcceptor::from(tls))).await
    }

    async fn serve_with(
        handler: impl Fn(&Recorded) -> Plan + Send + Sync + 'static,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            requests: Mutex::new(Vec::new()),
            handler: Mutex::new(Arc::new(handler)),
            connections: AtomicUsize::new(0),
            cut: watch::channel(0).0,
        });
        let accept_state = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let _ = stream.set_nodelay(true);
                accept_state.connections.fetch_add(1, Ordering::SeqCst);
                let state = accept_state.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| serve(state.clone(), req));
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(stream).await {
                                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                    }
                });
            }
        });
        Mock { addr, state }
    }

    /// `http://127.0.0.1:port` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn set(&self, handler: impl Fn(&Recorded) -> Plan + Send + Sync + 'static) {
        *self.state.handler.lock().unwrap() = Arc::new(handler);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn last(&self) -> Recorded {
        self.requests().pop().expect("the mock got a request")
    }

    pub fn hits(&self) -> usize {
        self.state.requests.lock().unwrap().len()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// A receiver of the count of bodies cut short by the peer hanging up.
    pub fn cut_watch(&self) -> watch::Receiver<usize> {
        self.state.cut.subscribe()
    }
}

async fn serve(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<ChunkBody>, Infallible> {
    let (head, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let recorded = Recorded {
        method: head.method.to_string(),
        path: head.uri.path().to_owned(),
        headers: head.headers,
        body,
    };
    let handler = state.handler.lock().unwrap().clone();
    let plan = handler(&recorded);
    state.requests.lock().unwrap().push(recorded);
    let mut steps: VecDeque<Step> = plan.steps.into();
    // Counts as cut if the gateway hangs up before the head is sent.
    let mut early = CutGuard(Some(state.clone()));
    // A plan that starts by waiting or hanging holds back the response head too.
    while let Some(step) = steps.front().cloned() {
        match step {
            Step::Wait(n) => {
                n.notified().await;
                steps.pop_front();
            }
            Step::Sleep(d) => {
                tokio::time::sleep(d).await;
                steps.pop_front();
            }
            Step::Hang => std::future::pending::<()>().await,
            Step::Send(_) => break,
        }
    }
    early.0 = None;
    let mut response = Response::new(ChunkBody {
        steps,
        pending: None,
        state,
        finished: false,
    });
    *response.status_mut() = StatusCode::from_u16(plan.status).unwrap();
    for (k, v) in plan.headers {
        response.headers_mut().append(
            http::HeaderName::try_from(k).unwrap(),
            http::HeaderValue::try_from(v).unwrap(),
        );
    }
    Ok(response)
}

struct ChunkBody {
    steps: VecDeque<Step>,
    pending: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    state: Arc<State>,
    finished: bool,
}

impl HttpBody for ChunkBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        loop {
            if let Some(p) = self.pending.as_mut() {
                if p.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.pending = None;
            }
            match self.steps.pop_front() {
                None => {
                    self.finished = true;
                    return Poll::Ready(None);
                }
                Some(Step::Send(b)) => return Poll::Ready(Some(Ok(Frame::data(b)))),
                Some(Step::Wait(n)) => {
                    self.pending = Some(Box::pin(async move { n.notified().await }))
                }
                Some(Step::Sleep(d)) => self.pending = Some(Box::pin(tokio::time::sleep(d))),
                Some(Step::Hang) => self.pending = Some(Box::pin(std::future::pending())),
            }
        }
    }
}

struct CutGuard(Option<Arc<State>>);

impl Drop for CutGuard {
    fn drop(&mut self) {
        if let Some(state) = self.0.take() {
            state.cut.send_modify(|n| *n += 1);
        }
    }
}

impl Drop for ChunkBody {
    fn drop(&mut self) {
        if !self.finished {
            self.state.cut.send_modify(|n| *n += 1);
        }
    }
}

/// The default answer of an OpenAI-compatible backend: echoes the requested
/// model; "Hello world" as a whole response or as a stream.
pub fn openai(req: &Recorded) -> Plan {
    let body = req.json();
    let model = body["model"].as_str().unwrap_or("unknown").to_owned();
    if req.path.ends_with("/embeddings") {
        return Plan::json(
            200,
            json!({"object": "list", "model": model,
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
            "usage": {"prompt_tokens": 4, "total_tokens": 4}}),
        );
    }
    if req.path.ends_with("/completions") && !req.path.ends_with("/chat/completions") {
        return Plan::json(
            200,
            json!({"id": "cmpl-mock", "object": "text_completion", "created": 1_760_000_000u64,
            "model": model, "choices": [{"text": " world", "index": 0, "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}}),
        );
    }
    if body["stream"] == Value::Bool(true) {
        let mut steps = vec![
            event(&chunk(
                &model,
                json!({"role": "assistant", "content": ""}),
                None,
            )),
            event(&chunk(&model, json!({"content": "Hello"}), None)),
            event(&chunk(&model, json!({"content": " world"}), None)),
            event(&chunk(&model, json!({}), Some("stop"))),
        ];
        if body["stream_options"]["include_usage"] == Value::Bool(true) {
            let mut usage = chunk(&model, json!({}), None);
            usage["choices"] = json!([]);
            usage["usage"] = json!({"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7});
            steps.push(event(&usage));
        }
        steps.push(done());
        return Plan::sse(steps);
    }
    Plan::json(
        200,
        json!({
            "id": "chatcmpl-mock", "object": "chat.completion", "created": 1_760_000_000u64, "model": model,
            "system_fingerprint": "fp_mock",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello world", "refusal": null},
                         "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
        }),
    )
}
