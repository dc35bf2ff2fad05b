//! Text → validated JSON value → compiled snapshot, collecting every problem.

use std::path::Path as FsPath;
use std::sync::LazyLock;

use serde_json::Value;

use super::{Path, Problem, compile, raw};
use crate::registry::{Shared, Snapshot};

/// Every problem found in a config; empty never.
pub type LoadError = Vec<Problem>;

/// The schema every config is checked against, embedded at build time.
pub const SCHEMA: &str = include_str!("../../config/schema.json");

static SCHEMA_VALUE: LazyLock<Value> =
    LazyLock::new(|| serde_json::from_str(SCHEMA).expect("config/schema.json is valid JSON"));

static VALIDATOR: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
    jsonschema::validator_for(&SCHEMA_VALUE).expect("config/schema.json is a valid JSON Schema")
});

/// Reads, parses, validates and compiles the config at `path`.
///
/// `env` answers `${VAR}` look-ups; pass `|k| std::env::var(k).ok()` in the
/// binary and a map in tests.
pub fn load(
    path: &FsPath,
    env: &dyn Fn(&str) -> Option<String>,
    shared: &Shared,
) -> Result<Snapshot, LoadError> {
    let text = read(path)?;
    load_str(&text, env, shared)
}

/// The whole pipeline on text already read.
pub fn load_str(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    shared: &Shared,
) -> Result<Snapshot, LoadError> {
    let mut value = parse_yaml(text).map_err(|p| vec![p])?;
    let mut problems = Vec::new();
    interpolate(&mut value, &Path::root(), env, &mut problems);
    problems.extend(validate(&value));
    // Compile even after schema problems where the file still deserialises,
    // so that one run reports every problem; else check references alone.
    let compiled = match serde_json::from_value::<raw::Config>(value.clone()) {
        Ok(raw) => compile::compile(raw, shared),
        Err(e) if problems.is_empty() => Err(vec![Problem::file(format!(
            "the config does not match its schema: {e}"
        ))]),
        Err(_) => Err(compile::references(&value)),
    };
    match compiled {
        Ok(snapshot) if problems.is_empty() => Ok(snapshot),
        Ok(_) => Err(problems),
        Err(more) => {
            for p in more {
                if !problems.iter().any(|q| q.path == p.path) {
                    problems.push(p);
                }
            }
            Err(problems)
        }
    }
}

/// Reads the file, naming it in the problem when that fails.
pub fn read(path: &FsPath) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|e| {
        vec![Problem::file(format!(
            "cannot read {}: {e}",
            path.display()
        ))]
    })
}

/// The one place that knows the YAML library: text in, JSON value out.
/// An empty file is an empty mapping.
pub fn parse_yaml(text: &str) -> Result<Value, Problem> {
    if text.trim().is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    let value: Value = serde_yaml::from_str(text).map_err(|e| match e.location() {
        Some(at) => Problem::file(format!(
            "not valid YAML at line {}, column {}: {e}",
            at.line(),
            at.column()
        )),
        None => Problem::file(format!("not valid YAML: {e}")),
    })?;
    match value {
        Value::Object(_) => Ok(value),
        Value::Null => Ok(Value::Object(Default::default())),
        _ => Err(Problem::file("the config must be a YAML mapping")),
    }
}

/// Expands `${VAR}` and `${VAR:-default}` in every string value. `$${` is a
/// literal `${`. An unset variable without a default is a problem at its path.
pub fn interpolate(
    value: &mut Value,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) {
    match value {
        Value::String(s) if s.contains('$') => match expand(s, env) {
            Ok(expanded) => *s = expanded,
            Err(message) => problems.push(Problem::new(path.clone(), message)),
        },
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate(item, &path.index(i), env, problems);
            }
        }
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                interpolate(v, &path.key(k.as_str()), env, problems);
            }
        }
        _ => {}
    }
}

fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let end = after
                .find('}')
                .ok_or_else(|| format!("unterminated ${{ in {s:?}"))?;
            let expr = &after[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!("{name:?} is not an environment variable name"));
            }
            match (env(name).filter(|v| !v.is_empty()), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (use ${{{name}:-default}} for a default)"
                    ));
                }
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Checks the value against the JSON Schema; one problem per violation.
pub fn validate(value: &Value) -> Vec<Problem> {
    let mut problems: Vec<Problem> = VALIDATOR
        .iter_errors(value)
        .map(|e| {
            let path = Path::from_pointer(e.instance_path().as_str(), value);
            // A regex means little to a reader: say what the value should be.
            let schema_path = e.schema_path().as_str();
            let described = schema_path
                .strip_suffix("/pattern")
                .or_else(|| schema_path.strip_suffix("/oneOf"))
                .and_then(|at| SCHEMA_VALUE.pointer(at))
                .and_then(|node| node.get("description"))
                .and_then(Value::as_str);
            let message = match described {
                Some(what) => format!(
                    "{} is not valid here: expected {}",
                    e.instance(),
                    lowercase_first(what)
                ),
                None => e.to_string(),
            };
            Problem::new(path, message)
        })
        .collect();
    problems.dedup();
    // A type's options that fail their own check are also reported by
    // `unevaluatedProperties` as unexpected; the real problem is enough.
    let real: Vec<Path> = problems
        .iter()
        .filter(|p| !p.message.starts_with("Unevaluated properties"))
        .map(|p| p.path.clone())
        .collect();
    problems.retain(|p| {
        !p.message.starts_with("Unevaluated properties")
            || !real.iter().any(|r| r.starts_with(&p.path))
    });
    problems
}

fn lowercase_first(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn expands_variables_and_defaults() {
        let e = env(&[("KEY", "abc"), ("EMPTY", "")]);
        assert_eq!(expand("${KEY}", &e).unwrap(), "abc");
        assert_eq!(expand("x-${KEY}-y", &e).unwrap(), "x-abc-y");
        assert_eq!(expand("${NOPE:-dflt}", &e).unwrap(), "dflt");
        assert_eq!(expand("${EMPTY:-dflt}", &e).unwrap(), "dflt");
        assert_eq!(expand("${NOPE:-}", &e).unwrap(), "");
        assert_eq!(expand("cost $5", &e).unwrap(), "cost $5");
        assert_eq!(expand("$${KEY}", &e).unwrap(), "${KEY}");
        assert!(
            expand("${NOPE}", &e)
                .unwrap_err()
                .contains("NOPE is not set")
        );
        assert!(expand("${KEY", &e).unwrap_err().contains("unterminated"));
        assert!(expand("${1BAD}", &e).is_err());
    }

    #[test]
    fn unset_variables_are_reported_at_their_path() {
        let mut v = parse_yaml("providers:\n  a:\n    api_key: ${MISSING}\n").unwrap();
        let mut problems = Vec::new();
        interpolate(&mut v, &Path::root(), &env(&[]), &mut problems);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0]
                .to_string()
                .starts_with("providers.a.api_key: environment variable MISSING")
        );
    }

    #[test]
    fn a_bad_option_is_reported_once() {
        let v = parse_yaml(
            "providers:\n  c: {type: anthropic, default_max_tokens: 0, version: \"2023-06-01\"}\n",
        )
        .unwrap();
        let problems = validate(&v);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(
            problems[0].path.to_string(),
            "providers.c.default_max_tokens"
        );
        let v = parse_yaml("providers:\n  d: {type: demo, bogus: 1}\n").unwrap();
        assert!(validate(&v)[0].message.contains("bogus"));
    }

    #[test]
    fn yaml_errors_carry_a_location() {
        let p = parse_yaml("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(p.message.contains("line"), "{}", p.message);
        assert!(parse_yaml("- 1\n- 2\n").is_err());
        assert!(parse_yaml("").unwrap().is_object());
    }
}
