//! A provider key that never prints.

use std::borrow::Cow;
use std::fmt;

/// A secret string: `Debug` and `Display` show `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Box<str>);

impl Secret {
    pub fn new(value: &str) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `text` with every occurrence of the secret replaced by `[redacted]`.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if self.0.len() >= 4 && text.contains(&*self.0) {
            Cow::Owned(text.replace(&*self.0, "[redacted]"))
        } else {
            Cow::Borrowed(text)
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_and_redacts() {
        let s = Secret::new("sk-live-123456");
        assert_eq!(format!("{s:?} {s}"), "*** ***");
        assert_eq!(s.redact("bad key sk-live-123456!"), "bad key [redacted]!");
        assert_eq!(s.redact("nothing here"), "nothing here");
    }
}
