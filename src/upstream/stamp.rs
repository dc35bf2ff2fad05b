//! The headers that go out with an adapter's request besides its own: the
//! dialect's fixed ones, the provider's stamp and the request id. The
//! plain-HTTP client copies them into the request head as they are (the
//! stamp's lines are made once, at config compile); the other transports
//! put them into the request's header map.

use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING, USER_AGENT};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::headers::X_REQUEST_ID;

const AGENT: HeaderValue =
    HeaderValue::from_static(concat!("switchyard/", env!("CARGO_PKG_VERSION")));

/// What a provider adds to every request: the configured headers, the
/// credential (which wins over them) and switchyard's user agent (unless one
/// is configured). Never a header the gateway sets itself
/// ([`set_by_gateway`]; the config refuses them).
pub struct Stamp {
    pairs: Vec<(HeaderName, HeaderValue)>,
    /// `pairs` as HTTP/1.1 header lines.
    lines: Vec<u8>,
}

/// Nothing to add: for the floor benchmark's client and for tests.
pub static NO_STAMP: Stamp = Stamp {
    pairs: Vec::new(),
    lines: Vec::new(),
};

impl Stamp {
    pub fn new(configured: &HeaderMap, credential: Option<(HeaderName, HeaderValue)>) -> Stamp {
        let mut all = configured.clone();
        if let Some((name, value)) = credential {
            all.insert(name, value);
        }
        if !all.contains_key(USER_AGENT) {
            all.insert(USER_AGENT, AGENT);
        }
        let pairs: Vec<_> = all
            .into_iter()
            .filter_map(|(n, v)| Some((n?, v)))
            .filter(|(n, _)| !set_by_gateway(n))
            .collect();
        let mut lines = Vec::new();
        for (name, value) in &pairs {
            put_line(&mut lines, name, value);
        }
        Stamp { pairs, lines }
    }

    /// Whether the stamp sets `name` (and so wins over the request's own).
    pub fn covers(&self, name: &HeaderName) -> bool {
        self.pairs.iter().any(|(n, _)| n == name)
    }
}

/// Names only: values hold credentials.
impl std::fmt::Debug for Stamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.pairs.iter().map(|(n, _)| n))
            .finish()
    }
}

/// What a transport adds to one request.
#[derive(Debug, Clone, Copy)]
pub struct Added<'a> {
    /// Headers of the dialect that every such request carries; the
    /// request's own map never repeats them.
    pub fixed: &'static [(HeaderName, HeaderValue)],
    pub stamp: &'a Stamp,
    pub request_id: Option<&'a HeaderValue>,
    /// Whether the caller reads a successful answer's headers. The
    /// plain-HTTP client then makes its header map; otherwise it reads only
    /// the framing from them. Other transports always make it.
    pub answer_headers: bool,
}

impl Added<'_> {
    /// Nothing at all.
    pub const NONE: Added<'static> = Added {
        fixed: &[],
        stamp: &NO_STAMP,
        request_id: None,
        answer_headers: true,
    };

    /// Puts everything into `headers`, for transports that send a header map.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in self.fixed {
            if !headers.contains_key(name) {
                headers.insert(name, value.clone());
            }
        }
        for (name, value) in &self.stamp.pairs {
            headers.insert(name, value.clone());
        }
        if let Some(id) = self.request_id {
            headers.insert(X_REQUEST_ID, id.clone());
        }
    }

    /// Whether a header of the request's own map is to be left out of the
    /// head: hop-by-hop, or set by the stamp or the request id instead.
    pub fn replaces(&self, name: &HeaderName) -> bool {
        hop_by_hop(name)
            || self.stamp.covers(name)
            || (self.request_id.is_some() && name == X_REQUEST_ID)
    }

    /// The fixed headers, the stamp and the request id as header lines.
    pub fn put_lines(&self, head: &mut Vec<u8>) {
        for (name, value) in self.fixed {
            if !self.stamp.covers(name) {
                put_line(head, name, value);
            }
        }
        head.extend_from_slice(&self.stamp.lines);
        if let Some(id) = self.request_id {
            put_line(head, &X_REQUEST_ID, id);
        }
    }

    /// An upper bound of how many bytes [`Added::put_lines`] writes.
    pub fn size(&self) -> usize {
        let fixed: usize = self
            .fixed
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum();
        let id = self
            .request_id
            .map_or(0, |v| X_REQUEST_ID.as_str().len() + v.len() + 4);
        fixed + self.stamp.lines.len() + id
    }
}

/// A message's framing and connection headers, which the HTTP/1.1 client
/// writes itself for a request (from the body it sends) and spends on the
/// framing of an answer.
pub(super) fn hop_by_hop(name: &HeaderName) -> bool {
    name == CONTENT_LENGTH || name == TRANSFER_ENCODING || name == CONNECTION
}

/// Headers of a provider request that the gateway sets itself: the body's
/// framing, the connection's, and the request id. A provider's config may
/// not set them.
pub fn set_by_gateway(name: &HeaderName) -> bool {
    hop_by_hop(name) || name == X_REQUEST_ID
}

/// `name: value` and a CRLF.
pub(super) fn put_line(head: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    head.extend_from_slice(name.as_str().as_bytes());
    head.extend_from_slice(b": ");
    head.extend_from_slice(value.as_bytes());
    head.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(configured: &[(&'static str, &'static str)], credential: Option<&str>) -> Stamp {
        let mut map = HeaderMap::new();
        for (n, v) in configured {
            map.insert(*n, HeaderValue::from_static(v));
        }
        Stamp::new(
            &map,
            credential.map(|c| {
                (
                    http::header::AUTHORIZATION,
                    HeaderValue::try_from(c).unwrap(),
                )
            }),
        )
    }

    fn map_of(added: Added<'_>, own: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (n, v) in own {
            map.insert(*n, HeaderValue::from_static(v));
        }
        added.apply(&mut map);
        map
    }

    /// The head lines, as the plain-HTTP client writes them around the
    /// request's own headers, parsed back into a map (repeats kept).
    fn lines_of(added: Added<'_>, own: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut head = Vec::new();
        for (n, v) in own {
            let name = HeaderName::from_static(n);
            if !added.replaces(&name) {
                put_line(&mut head, &name, &HeaderValue::from_static(v));
            }
        }
        let own_len = head.len();
        added.put_lines(&mut head);
        assert!(
            head.len() - own_len <= added.size(),
            "size() is an upper bound"
        );
        let text = String::from_utf8(head).unwrap();
        let mut map = HeaderMap::new();
        for line in text.split_terminator("\r\n") {
            let (n, v) = line.split_once(": ").unwrap();
            map.append(
                HeaderName::try_from(n).unwrap(),
                HeaderValue::try_from(v).unwrap(),
            );
        }
        map
    }

    static JSON: [(HeaderName, HeaderValue); 2] = [
        (
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ),
        (
            http::header::ACCEPT,
            HeaderValue::from_static("application/json"),
        ),
    ];

    #[test]
    fn both_forms_send_the_same_headers_with_the_same_winners() {
        let stamp = stamp(
            &[
                ("x-tenant", "search"),
                ("authorization", "Bearer configured"),
                ("user-agent", "theirs"),
                ("x-request-id", "configured"),
                ("accept", "text/plain"),
                ("content-length", "99"),
            ],
            Some("Bearer key"),
        );
        let id = HeaderValue::from_static("req-1");
        let added = Added {
            fixed: &JSON,
            stamp: &stamp,
            request_id: Some(&id),
            answer_headers: true,
        };
        let own = [("anthropic-version", "2023-06-01"), ("x-request-id", "own")];
        let map = map_of(added, &own);
        let lines = lines_of(added, &own);
        // What the gateway sets itself never comes from the stamp (the
        // config refuses it; the stamp drops it all the same).
        assert!(!map.contains_key("content-length"));
        assert!(!lines.contains_key("content-length"));
        for (name, _) in &map {
            let in_map: Vec<_> = map.get_all(name).iter().collect();
            let in_lines: Vec<_> = lines.get_all(name).iter().collect();
            assert_eq!(in_map, in_lines, "{name}");
        }
        assert_eq!(map.len(), lines.len());
        assert_eq!(map["authorization"], "Bearer key");
        assert_eq!(map["user-agent"], "theirs");
        assert_eq!(map["x-request-id"], "req-1");
        assert_eq!(map["x-tenant"], "search");
        assert_eq!(
            map["accept"], "text/plain",
            "the provider's headers win over the dialect's"
        );
        assert_eq!(map["content-type"], "application/json");
        assert_eq!(map["anthropic-version"], "2023-06-01");
    }

    #[test]
    fn without_a_request_id_the_requests_own_is_kept_and_none_is_added() {
        let added = Added {
            fixed: &[],
            stamp: &NO_STAMP,
            request_id: None,
            answer_headers: true,
        };
        let lines = lines_of(added, &[("x-request-id", "own")]);
        assert_eq!(lines["x-request-id"], "own");
        assert!(lines_of(Added::NONE, &[]).is_empty());
    }

    #[test]
    fn the_debug_form_names_headers_but_shows_no_value() {
        let shown = format!(
            "{:?}",
            stamp(&[("x-tenant", "search")], Some("Bearer sk-SECRET"))
        );
        assert!(
            shown.contains("authorization") && shown.contains("x-tenant"),
            "{shown}"
        );
        assert!(
            !shown.contains("SECRET") && !shown.contains("search"),
            "{shown}"
        );
    }
}
