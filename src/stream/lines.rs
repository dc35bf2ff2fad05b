//! Splitting a byte stream into lines across arbitrary read boundaries.
//!
//! Bytes are buffered, not decoded: the terminators are ASCII and never occur
//! inside a multi-byte UTF-8 sequence, so a character split across two reads
//! is whole again by the time its line is handed out.

/// Lines longer than this end the stream with an error instead of growing memory.
pub const MAX_LINE: usize = 16 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    LineTooLong,
    InvalidUtf8,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::LineTooLong => {
                write!(f, "a line of the stream is longer than {MAX_LINE} bytes")
            }
            FrameError::InvalidUtf8 => f.write_str("the stream is not valid UTF-8"),
        }
    }
}

#[derive(Debug, Default)]
pub struct Lines {
    /// A line not yet terminated.
    partial: Vec<u8>,
    /// CR ends a line too (server-sent events); else only LF does.
    cr: bool,
    /// The last read ended with CR: a LF at the start of the next one belongs to it.
    skip_lf: bool,
}

impl Lines {
    /// Lines end at CR, LF or CRLF (the event-stream rule).
    pub fn any_newline() -> Self {
        Lines {
            cr: true,
            ..Default::default()
        }
    }

    /// Lines end at LF.
    pub fn lf() -> Self {
        Lines::default()
    }

    /// No line is begun and no terminator half read.
    pub fn is_clear(&self) -> bool {
        self.partial.is_empty() && !self.skip_lf
    }

    /// Calls `on_line` with every line `input` completes, without its terminator.
    pub fn feed<E: From<FrameError>>(
        &mut self,
        mut input: &[u8],
        on_line: &mut dyn FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.skip_lf && !input.is_empty() {
            if input[0] == b'\n' {
                input = &input[1..];
            }
            self.skip_lf = false;
        }
        loop {
            let found = if self.cr {
                memchr::memchr2(b'\n', b'\r', input)
            } else {
                memchr::memchr(b'\n', input)
            };
            let Some(at) = found else { break };
            if self.partial.is_empty() {
                on_line(&input[..at])?;
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(&input[..at]);
                let result = on_line(&line);
                line.clear();
                self.partial = line;
                result?;
            }
            let terminator = input[at];
            input = &input[at + 1..];
            if terminator == b'\r' {
                match input.first() {
                    Some(b'\n') => input = &input[1..],
                    Some(_) => {}
                    None => self.skip_lf = true,
                }
            }
        }
        if self.partial.len() + input.len() > MAX_LINE {
            return Err(FrameError::LineTooLong.into());
        }
        self.partial.extend_from_slice(input);
        Ok(())
    }

    /// The stream ended: hands out a last line that had no terminator.
    pub fn finish<E: From<FrameError>>(
        &mut self,
        on_line: &mut dyn FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.partial.is_empty() {
            return Ok(());
        }
        let line = std::mem::take(&mut self.partial);
        on_line(&line)
    }
}
