//! Incremental newline-delimited JSON: one value per line, CRLF tolerated,
//! blank lines skipped, a last line without newline taken at the end.

use super::lines::{FrameError, Lines};

#[derive(Debug)]
pub struct NdjsonParser {
    lines: Lines,
}

impl Default for NdjsonParser {
    fn default() -> Self {
        NdjsonParser::new()
    }
}

impl NdjsonParser {
    pub fn new() -> Self {
        NdjsonParser { lines: Lines::lf() }
    }

    /// Calls `on_line` with every complete, non-blank line (without its terminator).
    pub fn feed<E: From<FrameError>>(
        &mut self,
        input: &[u8],
        on_line: &mut dyn FnMut(&str) -> Result<(), E>,
    ) -> Result<(), E> {
        self.lines.feed(input, &mut |line| emit(line, on_line))
    }

    pub fn finish<E: From<FrameError>>(
        &mut self,
        on_line: &mut dyn FnMut(&str) -> Result<(), E>,
    ) -> Result<(), E> {
        self.lines.finish(&mut |line| emit(line, on_line))
    }
}

fn emit<E: From<FrameError>>(
    line: &[u8],
    on_line: &mut dyn FnMut(&str) -> Result<(), E>,
) -> Result<(), E> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let text = std::str::from_utf8(line).map_err(|_| FrameError::InvalidUtf8)?;
    on_line(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_split_gives_the_same_lines() {
        let stream = "{\"a\":\"é\"}\r\n\n  \n{\"b\":2}\n{\"c\":3}";
        let bytes = stream.as_bytes();
        for i in 0..bytes.len() {
            let mut p = NdjsonParser::new();
            let mut lines = Vec::new();
            let mut push = |l: &str| -> Result<(), FrameError> {
                lines.push(l.to_owned());
                Ok(())
            };
            p.feed(&bytes[..i], &mut push).unwrap();
            p.feed(&bytes[i..], &mut push).unwrap();
            p.finish(&mut push).unwrap();
            assert_eq!(
                lines,
                ["{\"a\":\"é\"}", "{\"b\":2}", "{\"c\":3}"],
                "split at {i}"
            );
        }
    }
}
