//! The config file: from YAML text to a compiled, immutable [`Snapshot`].
//!
//! Stages, each a pure function except the first:
//! 1. `load::read` reads the file;
//! 2. `load::parse_yaml` turns text into a JSON value (the only place that
//!    knows the YAML library);
//! 3. `load::interpolate` expands `${VAR}` / `${VAR:-default}` in strings;
//! 4. `load::validate` checks the value against `config/schema.json`;
//! 5. `raw` deserialises it into types that mirror the file;
//! 6. `compile` cross-checks and builds the runtime types.
//!
//! Every stage reports every problem it finds, each with its YAML path.
//! `watch` re-runs the pipeline on file change and SIGHUP.
//!
//! [`Snapshot`]: crate::registry::Snapshot

pub mod compile;
pub mod load;
pub mod raw;
pub mod units;
pub mod watch;

use std::fmt;

pub use load::{LoadError, load};

/// One thing wrong with a config file, at a place in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: Path,
    pub message: String,
}

impl Problem {
    pub fn new(path: Path, message: impl Into<String>) -> Self {
        Problem {
            path,
            message: message.into(),
        }
    }

    /// A problem with the file as a whole (unreadable, not YAML).
    pub fn file(message: impl Into<String>) -> Self {
        Problem::new(Path::root(), message)
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_root() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// A YAML path such as `models.chat-default.targets[1].provider`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Path(Vec<Segment>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

impl Path {
    pub fn root() -> Self {
        Path(Vec::new())
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `prefix` is this path or one of its ancestors.
    pub fn starts_with(&self, prefix: &Path) -> bool {
        self.0.starts_with(&prefix.0)
    }

    pub fn key(&self, key: impl Into<String>) -> Path {
        let mut p = self.clone();
        p.0.push(Segment::Key(key.into()));
        p
    }

    pub fn index(&self, index: usize) -> Path {
        let mut p = self.clone();
        p.0.push(Segment::Index(index));
        p
    }

    /// Builds a path from a JSON Pointer, using the document to tell array
    /// indices from mapping keys that happen to be digits.
    pub fn from_pointer(pointer: &str, doc: &serde_json::Value) -> Path {
        let mut path = Path::root();
        let mut at = Some(doc);
        for token in pointer.split('/').skip(1) {
            let token = token.replace("~1", "/").replace("~0", "~");
            match at {
                Some(serde_json::Value::Array(items)) => {
                    let i = token.parse::<usize>().unwrap_or(0);
                    at = items.get(i);
                    path = path.index(i);
                }
                Some(serde_json::Value::Object(map)) => {
                    at = map.get(&token);
                    path = path.key(token);
                }
                _ => {
                    at = None;
                    path = path.key(token);
                }
            }
        }
        path
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Index(n) => write!(f, "[{n}]")?,
                Segment::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    let plain = !k.is_empty()
                        && !k.contains(['.', '[', ']', '"', ' ', ':'])
                        && !k.starts_with(|c: char| c.is_ascii_digit());
                    if plain {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_read_like_yaml() {
        let p = Path::root()
            .key("models")
            .key("chat-default")
            .key("targets")
            .index(1)
            .key("provider");
        assert_eq!(p.to_string(), "models.chat-default.targets[1].provider");
        assert_eq!(
            Path::root().key("models").key("a.b").to_string(),
            "models.\"a.b\""
        );
        assert_eq!(
            Path::root().key("models").key("ollama/*").to_string(),
            "models.ollama/*"
        );
    }

    #[test]
    fn pointers_become_paths() {
        let doc = serde_json::json!({"models": {"m": {"targets": [{}, {"provider": "x"}]}}});
        let p = Path::from_pointer("/models/m/targets/1/provider", &doc);
        assert_eq!(p.to_string(), "models.m.targets[1].provider");
    }
}
