//! `type: demo`: a built-in backend that speaks the OpenAI dialect in-process,
//! so the default config answers on a machine with no model server and no
//! cloud key. Its answers are deterministic and streamed token by token at
//! a configurable pace, with usage.
//!
//! The model name picks the behaviour:
//! - a name containing `echo` answers with the last user message;
//! - `error-<status>` (e.g. `error-503`) fails with that status;
//! - anything else answers with a fixed text.
//!
//! `max_tokens` / `max_completion_tokens` cut the answer (finish reason `length`).
//! `GET …/models` lists `demo` and `echo`, so discovery works against it too.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body::{Body as HttpBody, Frame};
use http_body_util::{BodyExt, Full};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Sleep;

use super::{AuthStyle, Built, openai::OpenAi};
use crate::config::{Path, Problem, raw, units};
use crate::openai::Usage;
use crate::upstream::{BoxError, Transport, UpstreamBody};

/// Where demo requests "go"; the transport never resolves it.
const BASE: &str = "http://demo.switchyard.invalid/v1";

const TEXT: &str = "Hello from switchyard! This answer comes from the built-in demo backend, \
streamed token by token so you can watch the gateway work without a model server. \
Point an alias at vLLM, LM Studio, Ollama or a cloud API to get real answers.";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    /// Delay between two streamed tokens.
    pace: Option<String>,
}

pub fn build(
    _id: &str,
    raw: &raw::Provider,
    path: &Path,
    problems: &mut Vec<Problem>,
) -> Option<Built> {
    let options: Options = super::options(raw, path, problems)?;
    let pace = match options.pace.as_deref().map(units::duration) {
        None => Duration::from_millis(20),
        Some(Ok(pace)) => pace,
        Some(Err(e)) => {
            problems.push(Problem::new(path.key("pace"), e));
            return None;
        }
    };
    Some(Built {
        adapter: Box::new(OpenAi::new(BASE)),
        transport: Some(Transport::Demo(Arc::new(Backend { pace }))),
        default_auth: AuthStyle::None,
    })
}

#[derive(Debug)]
pub struct Backend {
    pace: Duration,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Backend {
    pub fn new(pace: Duration) -> Self {
        Backend { pace }
    }

    /// Answers one OpenAI request.
    pub async fn handle(&self, request: Request<Bytes>) -> Response<UpstreamBody> {
        let path = request.uri().path().to_owned();
        if path.ends_with("/models") {
            let data: Vec<Value> = ["demo", "echo"]
                .iter()
                .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "switchyard"}))
                .collect();
            return json_response(
                StatusCode::OK,
                json!({"object": "list", "data": data}).to_string(),
            );
        }
        let body = request.into_body();
        let Ok(req) = crate::json::from_slice::<Value>(&body) else {
            return error(
                StatusCode::BAD_REQUEST,
                "the demo backend got a body that is not JSON",
            );
        };
        let model = req["model"].as_str().unwrap_or("demo").to_owned();
        if let Some(status) = model
            .strip_prefix("error-")
            .and_then(|s| s.parse::<u16>().ok())
            .and_then(|s| StatusCode::from_u16(s).ok())
            .filter(|s| !s.is_success())
        {
            return error(
                status,
                &format!("the demo backend fails with {status} as asked"),
            );
        }
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        if path.ends_with("/chat/completions") {
            let prompt = last_user_text(&req["messages"]);
            self.complete(
                &req,
                &model,
                created,
                format!("chatcmpl-demo-{n}"),
                &prompt,
                true,
            )
        } else if path.ends_with("/completions") {
            let prompt = match &req["prompt"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            self.complete(
                &req,
                &model,
                created,
                format!("cmpl-demo-{n}"),
                &prompt,
                false,
            )
        } else if path.ends_with("/embeddings") {
            embeddings(&req, &model)
        } else {
            error(
                StatusCode::NOT_FOUND,
                "the demo backend has no such endpoint",
            )
        }
    }

    fn complete(
        &self,
        req: &Value,
        model: &str,
        created: u64,
        id: String,
        prompt: &str,
        chat: bool,
    ) -> Response<UpstreamBody> {
        let answer = if model.contains("echo") { prompt } else { TEXT };
        let limit = req["max_completion_tokens"]
            .as_u64()
            .or(req["max_tokens"].as_u64())
            .unwrap_or(u64::MAX);
        let mut pieces: Vec<&str> = answer.split_inclusive(' ').collect();
        let finish = if pieces.len() as u64 > limit {
            pieces.truncate(limit as usize);
            "length"
        } else {
            "stop"
        };
        let usage = Usage::new(tokens(prompt), pieces.len() as u64);
        let (object, chunk_object) = if chat {
            ("chat.completion", "chat.completion.chunk")
        } else {
            ("text_completion", "text_completion")
        };
        let choice = |delta: Value, finish: Value| {
            if chat {
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            } else {
                let text = delta.get("content").cloned().unwrap_or(json!(""));
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish})
            }
        };

        if req["stream"] != Value::Bool(true) {
            let text = pieces.concat();
            let choice = if chat {
                json!({"index": 0, "message": {"role": "assistant", "content": text, "refusal": null},
                       "logprobs": null, "finish_reason": finish})
            } else {
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish})
            };
            let body = json!({"id": id, "object": object, "created": created, "model": model,
                              "system_fingerprint": "fp_demo", "choices": [choice], "usage": usage});
            return json_response(StatusCode::OK, body.to_string());
        }

        let chunk = |choices: Value| {
            json!({"id": id, "object": chunk_object, "created": created, "model": model,
                   "system_fingerprint": "fp_demo", "choices": choices})
        };
        let mut events = VecDeque::with_capacity(pieces.len() + 4);
        let mut push = |v: Value| events.push_back(Bytes::from(format!("data: {v}\n\n")));
        if chat {
            push(chunk(json!([choice(
                json!({"role": "assistant", "content": ""}),
                Value::Null
            )])));
        }
        for piece in &pieces {
            push(chunk(json!([choice(
                json!({"content": piece}),
                Value::Null
            )])));
        }
        push(chunk(json!([choice(json!({}), json!(finish))])));
        if req["stream_options"]["include_usage"] == Value::Bool(true) {
            let mut last = chunk(json!([]));
            last["usage"] = json!(usage);
            push(last);
        }
        events.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
        let mut response = Response::new(UpstreamBody::Local(Box::pin(Paced {
            events,
            pace: self.pace,
            sleep: None,
        })));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/event-stream"),
        );
        response
    }
}

fn embeddings(req: &Value, model: &str) -> Response<UpstreamBody> {
    let inputs: Vec<String> = match &req["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| v.to_string())
            })
            .collect(),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "`input` must be a string or an array",
            );
        }
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| json!({"object": "embedding", "index": i, "embedding": vector(text)}))
        .collect();
    let prompt: u64 = inputs.iter().map(|s| tokens(s)).sum();
    let body = json!({"object": "list", "data": data, "model": model,
                      "usage": {"prompt_tokens": prompt, "total_tokens": prompt}});
    json_response(StatusCode::OK, body.to_string())
}

/// A deterministic unit vector of 16 dimensions from the text's FNV-1a hashes.
fn vector(text: &str) -> Vec<f32> {
    let mut v: Vec<f32> = (0u64..16)
        .map(|seed| {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
            for b in text.bytes() {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
            (h >> 11) as f32 / (1u64 << 53) as f32 * 2.0 - 1.0
        })
        .collect();
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// About four bytes a token, the usual rule of thumb.
fn tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

fn last_user_text(messages: &Value) -> String {
    let Some(items) = messages.as_array() else {
        return String::new();
    };
    let Some(last) = items.iter().rev().find(|m| m["role"] == "user") else {
        return String::new();
    };
    match &last["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn json_response(status: StatusCode, body: String) -> Response<UpstreamBody> {
    let body = Full::new(Bytes::from(body)).map_err(|never| match never {});
    let mut response = Response::new(UpstreamBody::Local(Box::pin(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: StatusCode, message: &str) -> Response<UpstreamBody> {
    let body =
        json!({"error": {"message": message, "type": "server_error", "param": null, "code": null}});
    json_response(status, body.to_string())
}

/// Events released one at a time, `pace` apart.
struct Paced {
    events: VecDeque<Bytes>,
    pace: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl HttpBody for Paced {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(sleep) = self.sleep.as_mut() {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
        }
        let Some(event) = self.events.pop_front() else {
            return Poll::Ready(None);
        };
        if !self.pace.is_zero() && !self.events.is_empty() {
            self.sleep = Some(Box::pin(tokio::time::sleep(self.pace)));
        }
        Poll::Ready(Some(Ok(Frame::data(event))))
    }

    fn is_end_stream(&self) -> bool {
        self.events.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_are_deterministic_unit_vectors() {
        let a = vector("hello");
        assert_eq!(a, vector("hello"));
        assert_ne!(a, vector("world"));
        let norm: f32 = a.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4);
    }
}
