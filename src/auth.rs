//! Gateway keys: who is calling, and may they use this model.
//!
//! The config holds SHA-256 digests, never keys. A presented key is hashed and
//! the digest looked up; the final equality check is constant-time. The table
//! lookup itself compares digests, and a digest of an attacker's guess says
//! nothing about the bytes of any configured key, so no timing reveals key
//! contents.

use std::collections::HashMap;
use std::sync::Arc;

use globset::GlobSet;
use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{Error, Kind};

/// A configured gateway key.
#[derive(Debug)]
pub struct Key {
    /// The id: the only thing about a key that logs and metrics show.
    pub id: Arc<str>,
    pub digest: [u8; 32],
    /// Model names this key may use; `None` means all.
    pub models: Option<GlobSet>,
    pub limits: crate::limits::LimitSpec,
    /// Where `limits` are counted in the limit store.
    pub limit_keys: crate::limits::RuleKeys,
    pub budgets: Vec<crate::limits::BudgetSpec>,
}

impl Key {
    pub fn may_use(&self, alias: &str) -> bool {
        self.models.as_ref().is_none_or(|set| set.is_match(alias))
    }
}

/// Every key of one snapshot, by digest.
#[derive(Debug, Default)]
pub struct KeyTable {
    by_digest: HashMap<[u8; 32], Arc<Key>>,
    pub required: bool,
}

impl KeyTable {
    pub fn new(keys: Vec<Arc<Key>>, required: bool) -> Self {
        let by_digest = keys.into_iter().map(|k| (k.digest, k)).collect();
        KeyTable {
            by_digest,
            required,
        }
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// Finds the caller from `Authorization: Bearer` or `x-api-key`.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, Error> {
        let Some(presented) = presented_key(headers) else {
            return if self.required {
                Err(Error::new(
                    Kind::Unauthenticated,
                    "missing API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`",
                ))
            } else {
                Ok(Caller::Anonymous)
            };
        };
        let digest: [u8; 32] = Sha256::digest(presented).into();
        match self.by_digest.get(&digest) {
            Some(key) if bool::from(key.digest.ct_eq(&digest)) => Ok(Caller::Key(key.clone())),
            _ => Err(Error::new(
                Kind::Unauthenticated,
                "incorrect API key provided",
            )),
        }
    }
}

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Caller {
    Anonymous,
    Key(Arc<Key>),
}

impl Caller {
    /// The `key` label of logs and metrics.
    pub fn label(&self) -> &str {
        match self {
            Caller::Anonymous => "anonymous",
            Caller::Key(k) => &k.id,
        }
    }

    pub fn may_use(&self, alias: &str) -> bool {
        match self {
            Caller::Anonymous => true,
            Caller::Key(k) => k.may_use(alias),
        }
    }
}

/// The key bytes the client sent, if any. An empty value counts as none.
fn presented_key(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(v) = headers.get(http::header::AUTHORIZATION) {
        let v = v.as_bytes();
        let token = match v.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => v[7..].trim_ascii(),
            _ => v.trim_ascii(),
        };
        if !token.is_empty() {
            return Some(token);
        }
    }
    headers
        .get(crate::headers::X_API_KEY)
        .map(|v| v.as_bytes().trim_ascii())
        .filter(|v| !v.is_empty())
}

/// Lower-case hex of a key's SHA-256, as the config stores it.
pub fn digest_hex(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Parses 64 hex digits into a digest.
pub fn parse_digest(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in text.as_bytes().chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// A fresh gateway key: `sk-sy-` and 43 characters from the OS RNG.
pub fn generate_key() -> Result<String, getrandom::Error> {
    const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut key = String::from("sk-sy-");
    let mut buf = [0u8; 64];
    while key.len() < 6 + 43 {
        getrandom::fill(&mut buf)?;
        // Rejection sampling keeps every character equally likely.
        for b in buf {
            if b < 248 && key.len() < 6 + 43 {
                key.push(ALPHABET[(b % 62) as usize] as char);
            }
        }
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn table(required: bool) -> KeyTable {
        let key = Key {
            id: "team".into(),
            digest: parse_digest(&digest_hex("sk-good")).unwrap(),
            models: None,
            limits: Default::default(),
            limit_keys: crate::limits::RuleKeys::new("key:team"),
            budgets: Vec::new(),
        };
        KeyTable::new(vec![Arc::new(key)], required)
    }

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn bearer_and_x_api_key_are_accepted() {
        let t = table(true);
        let caller = t
            .authenticate(&headers("authorization", "Bearer sk-good"))
            .unwrap();
        assert_eq!(caller.label(), "team");
        assert!(
            t.authenticate(&headers("authorization", "bearer sk-good"))
                .is_ok()
        );
        assert!(t.authenticate(&headers("x-api-key", "sk-good")).is_ok());
    }

    #[test]
    fn unknown_or_missing_keys_are_rejected() {
        let t = table(true);
        assert!(
            t.authenticate(&headers("authorization", "Bearer sk-bad"))
                .is_err()
        );
        assert!(t.authenticate(&HeaderMap::new()).is_err());
        let open = table(false);
        assert_eq!(
            open.authenticate(&HeaderMap::new()).unwrap().label(),
            "anonymous"
        );
        assert_eq!(
            open.authenticate(&headers("authorization", "Bearer "))
                .unwrap()
                .label(),
            "anonymous"
        );
        assert!(open.authenticate(&headers("x-api-key", "sk-bad")).is_err());
    }

    #[test]
    fn generated_keys_have_the_documented_shape() {
        let k = generate_key().unwrap();
        assert_eq!(k.len(), 49);
        assert!(k.starts_with("sk-sy-"));
        assert!(k[6..].chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(k, generate_key().unwrap());
    }

    #[test]
    fn digests_round_trip() {
        let h = digest_hex("test");
        assert_eq!(
            h,
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
        assert_eq!(hex(&parse_digest(&h).unwrap()), h);
        assert!(parse_digest("xyz").is_none());
    }
}
