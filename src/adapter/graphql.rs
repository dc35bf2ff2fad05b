//! `type: graphql`: one configured GraphQL operation per request, over
//! GraphQL-over-HTTP POST. The operation's `variables` are a template filled
//! from the OpenAI request (see [`super::template`]); the answer, token
//! counts and finish reason are read from the result with JSON Pointers.
//!
//! GraphQL over HTTP does not stream: a client's stream is synthesized from
//! the whole answer. Any entry in `errors` fails the request (partial data is
//! not an answer), quoting the first error's message.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use serde::Deserialize;
use serde_json::Value;

use super::template::{Answer, AnswerOptions, Coverage, NoStream, Template, endpoint};
use super::{Adapter, AuthStyle, Built, Converted, UpstreamRequest};
use crate::call::Call;
use crate::config::{Path, Problem, raw};
use crate::error::Error;
use crate::openai::Endpoint;
use crate::route::ModelName;
use crate::stream::Decoder;
use crate::upstream::{Cause, Failure, truncate};

/// The `accept` the GraphQL-over-HTTP draft recommends when the server's
/// support is unknown.
const ACCEPT: &str = "application/graphql-response+json, application/json;q=0.9";

// === wire types ===

/// A GraphQL error entry: only `message` is required.
#[derive(Debug, Deserialize)]
struct GraphQlError {
    #[serde(default)]
    message: Option<Value>,
    #[serde(default)]
    extensions: Option<Extensions>,
}

#[derive(Debug, Deserialize)]
struct Extensions {
    #[serde(default)]
    code: Option<Value>,
}

// === config ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    url: String,
    query: String,
    #[serde(default)]
    operation_name: Option<String>,
    #[serde(default)]
    variables: Option<Value>,
    response: AnswerOptions,
}

pub fn build(
    id: &str,
    raw: &raw::Provider,
    path: &Path,
    problems: &mut Vec<Problem>,
) -> Option<Built> {
    let options: Options = super::options(raw, path, problems)?;
    let before = problems.len();
    if raw.base_url.is_some() {
        problems.push(Problem::new(
            path.key("base_url"),
            "a graphql provider names its whole endpoint in `url`",
        ));
    }
    let uri = endpoint(&options.url, &["http", "https"], &path.key("url"), problems);
    if options.query.trim().is_empty() {
        problems.push(Problem::new(
            path.key("query"),
            "must hold a GraphQL document",
        ));
    }
    if options.operation_name.as_deref().is_some_and(str::is_empty) {
        problems.push(Problem::new(
            path.key("operation_name"),
            "must not be empty",
        ));
    }
    let variables = match &options.variables {
        None => None,
        Some(v @ Value::Object(_)) => Template::compile(v, &path.key("variables"), problems),
        Some(_) => {
            problems.push(Problem::new(
                path.key("variables"),
                "must be a mapping: GraphQL variables are a JSON object",
            ));
            None
        }
    };
    if options.response.error.is_some() {
        problems.push(Problem::new(
            path.key("response").key("error"),
            "GraphQL errors are read from the result's `errors`; remove this pointer",
        ));
    }
    let answer = options.response.compile(&path.key("response"), problems);
    if problems.len() != before {
        return None;
    }

    let mut head = Vec::with_capacity(options.query.len() + 64);
    head.extend_from_slice(b"{\"query\":");
    serde_json::to_writer(&mut head, &options.query).ok()?;
    if let Some(name) = &options.operation_name {
        head.extend_from_slice(b",\"operationName\":");
        serde_json::to_writer(&mut head, name).ok()?;
    }
    let coverage = Coverage::of(&variables.iter().collect::<Vec<_>>());
    Some(Built {
        adapter: Box::new(GraphQl {
            id: id.into(),
            uri: uri?,
            head: head.into(),
            variables,
            coverage,
            answer: answer?,
        }),
        transport: None,
        default_auth: AuthStyle::Bearer,
    })
}

#[derive(Debug)]
pub struct GraphQl {
    id: Box<str>,
    uri: Uri,
    /// `{"query":…` and `,"operationName":…`: the same for every request.
    head: Box<[u8]>,
    variables: Option<Template>,
    coverage: Coverage,
    answer: Answer,
}

impl Adapter for GraphQl {
    fn supports(&self, endpoint: Endpoint) -> bool {
        matches!(endpoint, Endpoint::Chat | Endpoint::Completions)
    }

    fn request(&self, call: &Call, model: &ModelName) -> Result<UpstreamRequest, Error> {
        let mut body = Vec::with_capacity(self.head.len() + call.body.len() + 32);
        body.extend_from_slice(&self.head);
        if self.variables.is_some() {
            body.extend_from_slice(b",\"variables\":");
        }
        self.coverage.fill(
            call,
            model,
            &self.id,
            false,
            self.variables.as_ref(),
            &mut body,
        )?;
        body.push(b'}');
        let mut headers = HeaderMap::with_capacity(super::REQUEST_HEADERS);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::ACCEPT, HeaderValue::from_static(ACCEPT));
        Ok(UpstreamRequest {
            uri: self.uri.clone(),
            fixed: &[],
            headers,
            body: Bytes::from(body),
            stream: false,
        })
    }

    fn response(
        &self,
        _call: &Call,
        _headers: &http::HeaderMap,
        body: Bytes,
    ) -> Result<Converted, Failure> {
        let value: Value = crate::json::from_slice(&body)
            .map_err(|e| Failure::protocol(format!("the result is not JSON: {e}")))?;
        if !value.is_object() {
            return Err(Failure::protocol("the result is not a JSON object"));
        }
        if let Some((message, code)) = first_error(&value) {
            let mut failure = Failure::new(Cause::InBand, message);
            failure.code = code;
            return Err(failure);
        }
        Ok(Converted::Chat(self.answer.completion(&value)?))
    }

    fn decoder(&self, _call: &Call) -> Box<dyn Decoder> {
        Box::new(NoStream)
    }

    /// 400, 404 and 422 mean the configured operation or endpoint is wrong
    /// (the gateway's problem, not the client's): 502, never retried. Other
    /// statuses keep their meaning (401/403 credentials, 429 rate limits, 5xx).
    fn failure(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Failure {
        let parsed = crate::json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| first_error(&v));
        let (message, code) = parsed.unwrap_or_else(|| super::error_message(body));
        let cause = match status {
            StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND | StatusCode::UNPROCESSABLE_ENTITY => {
                Cause::InBand
            }
            other => Cause::Status(other),
        };
        let message = match cause {
            Cause::InBand => format!("the operation was refused ({}): {message}", status.as_u16()),
            _ => message,
        };
        Failure {
            cause,
            message: truncate(message, 500),
            code,
            retry_after: super::retry_after(headers),
        }
    }
}

/// The first entry of a result's `errors`: its message and `extensions.code`.
fn first_error(value: &Value) -> Option<(String, Option<String>)> {
    let first = value.get("errors")?.as_array()?.first()?;
    let error = GraphQlError::deserialize(first).unwrap_or(GraphQlError {
        message: None,
        extensions: None,
    });
    let message = match error.message {
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => format!("the result holds an error without a message: {first}"),
    };
    let code = match error.extensions.and_then(|e| e.code) {
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    Some((message, code))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapter::template::testing::{call, problems};
    use crate::chat::FinishReason;
    use crate::openai::Usage;
    use serde_json::json;

    const PROVIDER: &str = r#"    type: graphql
    url: http://gql.test/graphql
    api_key: sk-gql
    operation_name: Generate
    query: "mutation Generate($input: ChatInput!) { generateResponse(input: $input) { text } }"
    variables:
      input:
        messages: "{{messages}}"
        settings: {model: "{{model}}", maxTokens: "{{max_tokens}}", temperature: "{{temperature}}"}
        note: "for {{user}}"
    response:
      content: /data/generateResponse/text
      prompt_tokens: /data/generateResponse/usage/promptTokens
      completion_tokens: /data/generateResponse/usage/completionTokens
      finish_reason: /data/generateResponse/stopReason"#;

    fn body(json: serde_json::Value) -> Bytes {
        Bytes::from(json.to_string())
    }

    #[test]
    fn the_operation_carries_the_filled_variables() {
        let (p, c) = call(
            PROVIDER,
            Endpoint::Chat,
            r#"{"model":"m","messages":[{"role":"user","content":"Hi"}],"max_tokens":256,"stream":true}"#,
        );
        let r = p.adapter.request(&c, &"internal-7b".into()).unwrap();
        assert_eq!(r.uri, "http://gql.test/graphql");
        assert!(
            !r.stream,
            "GraphQL answers whole; the stream is synthesized"
        );
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(r.headers["accept"], ACCEPT);
        let sent: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            sent,
            json!({
                "query": "mutation Generate($input: ChatInput!) { generateResponse(input: $input) { text } }",
                "operationName": "Generate",
                "variables": {"input": {
                    "messages": [{"role": "user", "content": "Hi"}],
                    "settings": {"model": "internal-7b", "maxTokens": 256, "temperature": null},
                    "note": "for "
                }}
            })
        );
    }

    #[test]
    fn the_answer_is_read_with_pointers() {
        let (p, c) = call(
            PROVIDER,
            Endpoint::Chat,
            r#"{"model":"m","messages":[{"role":"user","content":"Hi"}]}"#,
        );
        let answer = body(json!({"data": {"generateResponse": {
            "text": "Hello!", "usage": {"promptTokens": 7, "completionTokens": 2}, "stopReason": "MAX_TOKENS"}}}));
        let Converted::Chat(done) = p
            .adapter
            .response(&c, &http::HeaderMap::new(), answer)
            .unwrap()
        else {
            panic!("a chat answer")
        };
        assert_eq!(done.content.as_deref(), Some("Hello!"));
        assert_eq!(done.usage, Usage::new(7, 2));
        assert_eq!(done.finish_reason, FinishReason::Length);
        let bare = body(json!({"data": {"generateResponse": {"text": "Hi"}}}));
        let Converted::Chat(done) = p
            .adapter
            .response(&c, &http::HeaderMap::new(), bare)
            .unwrap()
        else {
            panic!("a chat answer")
        };
        assert_eq!(
            (done.usage, done.finish_reason),
            (Usage::new(0, 0), FinishReason::Stop)
        );
    }

    #[test]
    fn errors_fail_even_with_partial_data() {
        let (p, c) = call(
            PROVIDER,
            Endpoint::Chat,
            r#"{"model":"m","messages":[{"role":"user","content":"Hi"}]}"#,
        );
        let partial = body(json!({
            "data": {"generateResponse": {"text": "Hello!", "usage": null}},
            "errors": [{"message": "usage service unavailable", "path": ["generateResponse", "usage"],
                        "extensions": {"code": "UNAVAILABLE"}},
                       {"message": "second"}]}));
        let f = p
            .adapter
            .response(&c, &http::HeaderMap::new(), partial)
            .unwrap_err();
        assert_eq!(f.cause, Cause::InBand);
        assert_eq!(f.message, "usage service unavailable");
        assert_eq!(f.code.as_deref(), Some("UNAVAILABLE"));
        let f = p
            .adapter
            .response(
                &c,
                &http::HeaderMap::new(),
                body(json!({"data": {"generateResponse": null}})),
            )
            .unwrap_err();
        assert_eq!(f.cause, Cause::Protocol);
        assert!(
            f.message.contains("/data/generateResponse/text"),
            "{}",
            f.message
        );
        let f = p
            .adapter
            .response(&c, &http::HeaderMap::new(), Bytes::from_static(b"<html>"))
            .unwrap_err();
        assert_eq!(f.cause, Cause::Protocol);
    }

    #[test]
    fn statuses_map_per_graphql_over_http() {
        let (p, _) = call(
            PROVIDER,
            Endpoint::Chat,
            r#"{"model":"m","messages":[{"role":"user","content":"Hi"}]}"#,
        );
        let gql = br#"{"errors":[{"message":"Variable \"$input\" got invalid value","extensions":{"code":"BAD_USER_INPUT"}}]}"#;
        let f = p
            .adapter
            .failure(StatusCode::UNPROCESSABLE_ENTITY, &HeaderMap::new(), gql);
        assert_eq!(
            f.cause,
            Cause::InBand,
            "the configured operation is at fault: 502"
        );
        assert_eq!(
            f.message,
            "the operation was refused (422): Variable \"$input\" got invalid value"
        );
        assert_eq!(f.code.as_deref(), Some("BAD_USER_INPUT"));
        let f = p
            .adapter
            .failure(StatusCode::BAD_REQUEST, &HeaderMap::new(), b"Syntax Error");
        assert_eq!(f.cause, Cause::InBand);
        let mut h = HeaderMap::new();
        h.insert("retry-after", "12".parse().unwrap());
        let f = p.adapter.failure(
            StatusCode::TOO_MANY_REQUESTS,
            &h,
            br#"{"errors":[{"message":"slow down"}]}"#,
        );
        assert_eq!(f.cause, Cause::Status(StatusCode::TOO_MANY_REQUESTS));
        assert_eq!(f.retry_after, Some(std::time::Duration::from_secs(12)));
        assert_eq!(f.message, "slow down");
        let f = p
            .adapter
            .failure(StatusCode::UNAUTHORIZED, &HeaderMap::new(), b"");
        assert_eq!(f.cause, Cause::Status(StatusCode::UNAUTHORIZED));
        let f = p.adapter.failure(
            StatusCode::BAD_GATEWAY,
            &HeaderMap::new(),
            b"<html>oops</html>",
        );
        assert_eq!(
            (f.cause, f.message.as_str()),
            (Cause::Status(StatusCode::BAD_GATEWAY), "<html>oops</html>")
        );
    }

    #[test]
    fn what_a_template_cannot_carry_is_refused() {
        let (p, c) = call(
            PROVIDER,
            Endpoint::Chat,
            r#"{"model":"m","messages":[{"role":"user","content":"Hi"}],"tools":[{"type":"function","function":{"name":"f"}}]}"#,
        );
        let e = p.adapter.request(&c, &"x".into()).unwrap_err();
        assert_eq!(e.param, Some("tools"));
        assert!(e.message.contains("provider p"), "{}", e.message);
        let (p, c) = call(
            PROVIDER,
            Endpoint::Chat,
            r#"{"model":"m","messages":[{"role":"user","content":"Hi"}],"n":3}"#,
        );
        assert_eq!(
            p.adapter.request(&c, &"x".into()).unwrap_err().param,
            Some("n")
        );
        let (p, c) = call(
            PROVIDER,
            Endpoint::Chat,
            r#"{"model":"m","messages":[{"role":"user","content":"Hi"}],"tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"none"}"#,
        );
        assert!(p.adapter.request(&c, &"x".into()).is_ok());
        assert!(!p.adapter.supports(Endpoint::Embeddings));
    }

    #[test]
    fn config_problems_name_their_place() {
        let bad = PROVIDER
            .replace("{{max_tokens}}", "{{max_tokenz}}")
            .replace("content: /data/generateResponse/text", "content: /data/x~2")
            .replace(
                "url: http://gql.test/graphql",
                "url: http://gql.test/graphql\n    base_url: http://gql.test",
            );
        let p = problems(&bad);
        let has = |prefix: &str| p.iter().any(|l| l.starts_with(prefix));
        assert!(
            has(
                "providers.p.variables.input.settings.maxTokens: unknown placeholder `{{max_tokenz}}`"
            ),
            "{p:?}"
        );
        assert!(has("providers.p.response.content: "), "{p:?}");
        assert!(
            has("providers.p.base_url: a graphql provider names its whole endpoint in `url`"),
            "{p:?}"
        );
        assert!(problems(PROVIDER).is_empty());
    }
}
