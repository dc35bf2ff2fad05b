//! Model resolution: the name a client sends → an alias and its targets.
//!
//! Exact aliases win; otherwise wildcard aliases are tried in file order.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use bytes::Bytes;
use globset::GlobMatcher;

use tower::retry::budget::TpsBudget;

use crate::dispatch::AnswerHeaders;
use crate::dispatch::health::TargetState;
use crate::provider::Provider;

/// One place a request for an alias can go.
#[derive(Debug)]
pub struct Target {
    pub provider: Arc<Provider>,
    /// The backend's model name; `None` means "what the client asked for"
    /// (for a wildcard, the part the `*` matched).
    pub model: Option<ModelName>,
    /// The headers of this target's answers, made once.
    pub answer: AnswerHeaders,
    pub weight: u32,
    /// Health and latency, kept across reloads.
    pub state: Arc<TargetState>,
}

/// A model name and its JSON string (quoted and escaped), made together
/// when the config is compiled: bodies and answers splice the JSON form, and
/// making it per request was an allocation and an escape scan each time.
#[derive(Debug, Clone)]
pub struct ModelName {
    pub name: Arc<str>,
    pub json: Bytes,
}

impl ModelName {
    pub fn new(name: Arc<str>) -> Self {
        let json = crate::openai::json_string(&name);
        ModelName { name, json }
    }
}

impl From<&str> for ModelName {
    fn from(name: &str) -> Self {
        ModelName::new(Arc::from(name))
    }
}

impl Deref for ModelName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for ModelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// A name clients may send as `model`, or a wildcard pattern of names.
#[derive(Debug)]
pub struct Alias {
    /// The alias as written in the config; the `model` metric label.
    pub name: Arc<str>,
    /// `name` with its JSON string: the backend model of targets that name
    /// none, and the `model` of answers to a client that asked for the
    /// alias by that name.
    pub as_model: ModelName,
    pub targets: Vec<Target>,
    pub wildcard: bool,
    /// Aliases tried in order when every target failed.
    pub fallbacks: Vec<Arc<str>>,
    /// Retries allowed on top of this alias's recent traffic.
    pub budget: Arc<TpsBudget>,
    /// Limits of the alias, whoever calls.
    pub limits: crate::limits::LimitSpec,
    /// Where `limits` are counted in the limit store.
    pub limit_keys: crate::limits::RuleKeys,
    /// Price per million tokens, for cost budgets.
    pub price: Option<crate::limits::Price>,
}

#[derive(Debug)]
struct Wildcard {
    matcher: GlobMatcher,
    /// For `prefix*suffix` patterns, what surrounds the one `*`.
    affixes: Option<(String, String)>,
    alias: Arc<Alias>,
}

/// Every alias of a snapshot.
#[derive(Debug, Default)]
pub struct Aliases {
    /// hashbrown's hasher: every request looks its model up here, and std's
    /// SipHash costs several times as much for a short name (the keys come
    /// from the config, so there is no table for a client to flood).
    exact: hashbrown::HashMap<Arc<str>, Arc<Alias>>,
    wildcards: Vec<Wildcard>,
    /// In file order, for listings.
    pub all: Vec<Arc<Alias>>,
}

/// A resolved model name.
#[derive(Debug, Clone)]
pub struct Route {
    pub alias: Arc<Alias>,
    /// The backend model name for targets that do not name one.
    pub default_model: ModelName,
}

impl Aliases {
    pub fn insert_exact(&mut self, alias: Arc<Alias>) {
        self.exact.insert(alias.name.clone(), alias.clone());
        self.all.push(alias);
    }

    pub fn insert_wildcard(&mut self, matcher: GlobMatcher, alias: Arc<Alias>) {
        let pattern = alias.name.as_ref();
        let affixes = match pattern.split_once('*') {
            Some((pre, post))
                if !post.contains('*') && !pattern.contains(['?', '[', ']', '{', '}', '\\']) =>
            {
                Some((pre.to_owned(), post.to_owned()))
            }
            _ => None,
        };
        self.wildcards.push(Wildcard {
            matcher,
            affixes,
            alias: alias.clone(),
        });
        self.all.push(alias);
    }

    pub fn get_exact(&self, name: &str) -> Option<&Arc<Alias>> {
        self.exact.get(name)
    }

    /// Resolves a client's model name.
    pub fn resolve(&self, model: &str) -> Option<Route> {
        if let Some(alias) = self.exact.get(model) {
            return Some(Route {
                alias: alias.clone(),
                default_model: alias.as_model.clone(),
            });
        }
        let w = self.wildcards.iter().find(|w| w.matcher.is_match(model))?;
        let captured = match &w.affixes {
            Some((pre, post)) => &model[pre.len()..model.len() - post.len()],
            None => model,
        };
        Some(Route {
            alias: w.alias.clone(),
            default_model: ModelName::new(Arc::from(captured)),
        })
    }
}

/// Does this alias name contain glob syntax?
pub fn is_pattern(name: &str) -> bool {
    name.contains(['*', '?', '[', '{'])
}

/// Compiles a glob in which `*` may match `/` (model names are not paths).
pub fn glob(pattern: &str) -> Result<globset::Glob, globset::Error> {
    globset::GlobBuilder::new(pattern)
        .literal_separator(false)
        .backslash_escape(true)
        .build()
}
