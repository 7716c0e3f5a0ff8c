//! A streaming `multipart/form-data` parser (RFC 7578 over RFC 2046) with fixed bounds.
//!
//! Sans-IO: the caller pushes the body's bytes in as they arrive and takes [`Event`]s out, so
//! the parser holds no thread, no socket and no file, and is fuzzed on its own. What it holds
//! is bounded whatever the client sends:
//! - a part's header block is at most [`Bounds::max_head_bytes`]; it is searched once per
//!   chunk within that bound, never rescanned from the start of an unbounded buffer;
//! - a body holds at most a few parts ([`Bounds::max_parts`]);
//! - the preamble before the first boundary is at most [`Bounds::max_preamble_bytes`];
//! - part data is handed out as it arrives: the parser keeps only the bytes that could still
//!   be the start of a boundary (under 80).

use std::fmt;

use bytes::{Buf, Bytes, BytesMut};
use memchr::memmem;

/// What one upload body may hold.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// Most bytes in one part's header block (the lines between its boundary and its data).
    pub max_head_bytes: usize,
    /// Most parts in one body.
    pub max_parts: usize,
    /// Most bytes before the first boundary.
    pub max_preamble_bytes: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            max_head_bytes: 8 * 1024,
            max_parts: 64,
            max_preamble_bytes: 8 * 1024,
        }
    }
}

/// What the parser found.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A part begins; its data follows as [`Event::Data`] until the next `Part` or `End`.
    Part(PartHead),
    /// Bytes of the current part, in order; never empty.
    Data(Bytes),
    /// The closing boundary: the body is complete (anything after it is ignored).
    End,
}

/// The headers of a part that Corral reads.
#[derive(Debug, PartialEq, Eq)]
pub struct PartHead {
    /// The `name` parameter of its `Content-Disposition: form-data`.
    pub name: String,
    /// Its `filename` parameter, if any.
    pub file_name: Option<String>,
}

/// Why a body is not a well-formed, bounded `multipart/form-data` body.
#[derive(Debug, PartialEq, Eq)]
pub enum Error {
    /// More than [`Bounds::max_head_bytes`] of headers in one part.
    HeadTooLong {
        /// The bound that was exceeded.
        limit: usize,
    },
    /// More than [`Bounds::max_parts`] parts.
    TooManyParts {
        /// The bound that was exceeded.
        limit: usize,
    },
    /// More than [`Bounds::max_preamble_bytes`] before the first boundary.
    PreambleTooLong {
        /// The bound that was exceeded.
        limit: usize,
    },
    /// A part's header block is malformed; says how.
    BadHead(String),
    /// The body ended before its closing boundary.
    Truncated,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HeadTooLong { limit } => {
                write!(f, "a part's headers are longer than {limit} bytes")
            }
            Self::TooManyParts { limit } => write!(f, "the body has more than {limit} parts"),
            Self::PreambleTooLong { limit } => {
                write!(f, "no boundary within the first {limit} bytes of the body")
            }
            Self::BadHead(why) => write!(f, "a part's headers are malformed: {why}"),
            Self::Truncated => write!(f, "the body ended before its closing boundary"),
        }
    }
}

impl std::error::Error for Error {}

/// The boundary of a `multipart/form-data` content type, if it is one (quoted or not). RFC
/// 2046 allows 1 to 70 characters; up to [`MAX_BOUNDARY`] are accepted, as some clients send
/// longer ones.
pub fn boundary(content_type: &str) -> Option<String> {
    let mut params = split_params(content_type);
    let kind = params.next()?;
    if !kind.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    let value = params.find_map(|param| {
        let (key, value) = param.split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| unquote(value.trim()))
    })??;
    let valid = (1..=MAX_BOUNDARY).contains(&value.len())
        && value.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        && !value.ends_with(' ');
    valid.then_some(value)
}

/// Longest boundary accepted.
pub const MAX_BOUNDARY: usize = 200;

#[derive(Debug, PartialEq, Eq)]
enum State {
    /// Before the first boundary; counts the bytes dropped.
    Preamble(usize),
    /// Just after a boundary: either `--` (the end) or the line break before a header block.
    Delimited,
    /// In a part's header block.
    Head,
    /// In a part's data.
    Body,
    /// After the closing boundary.
    Done,
}

/// The parser: push bytes with [`Parser::push`], mark the end with [`Parser::finish`], and
/// take events with [`Parser::next_event`] until it returns `Ok(None)` (it needs more bytes).
pub struct Parser {
    /// `CRLF--boundary`: how every boundary, the first included, appears in the stream.
    delimiter: Vec<u8>,
    finder: memmem::Finder<'static>,
    buf: BytesMut,
    state: State,
    ended: bool,
    parts: usize,
    bounds: Bounds,
}

impl fmt::Debug for Parser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Parser")
            .field("state", &self.state)
            .field("buffered", &self.buf.len())
            .field("parts", &self.parts)
            .finish_non_exhaustive()
    }
}

impl Parser {
    /// A parser for a body whose `Content-Type` names `boundary`, within `bounds`.
    pub fn new(boundary: &str, bounds: Bounds) -> Self {
        let delimiter = [b"\r\n--", boundary.as_bytes()].concat();
        let finder = memmem::Finder::new(&delimiter).into_owned();
        // A body may start with its first boundary, without the line break before it.
        let buf = BytesMut::from(&b"\r\n"[..]);
        Self {
            delimiter,
            finder,
            buf,
            state: State::Preamble(0),
            ended: false,
            parts: 0,
            bounds,
        }
    }

    /// Appends bytes of the body.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.state != State::Done {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Bytes the parser holds now (at most a part header's bound, or the few bytes that may
    /// start a boundary, plus the last chunk pushed).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Marks the end of the body.
    pub fn finish(&mut self) {
        self.ended = true;
    }

    /// The next event; `Ok(None)` when more bytes are needed (or after [`Event::End`]).
    pub fn next_event(&mut self) -> Result<Option<Event>, Error> {
        loop {
            let progressed = match self.state {
                State::Preamble(dropped) => self.preamble(dropped)?,
                State::Delimited => match self.delimited()? {
                    Some(event) => return Ok(Some(event)),
                    None => false,
                },
                State::Head => match self.head()? {
                    Some(event) => return Ok(Some(event)),
                    None => false,
                },
                State::Body => return self.body(),
                State::Done => return Ok(None),
            };
            if !progressed {
                return if self.ended {
                    Err(Error::Truncated)
                } else {
                    Ok(None)
                };
            }
        }
    }

    /// The bytes at the end of the buffer that could be the start of a delimiter.
    fn keep(&self) -> usize {
        self.delimiter.len() - 1
    }

    fn preamble(&mut self, dropped: usize) -> Result<bool, Error> {
        if let Some(at) = self.finder.find(&self.buf) {
            if dropped + at > self.bounds.max_preamble_bytes {
                return Err(Error::PreambleTooLong {
                    limit: self.bounds.max_preamble_bytes,
                });
            }
            self.buf.advance(at + self.delimiter.len());
            self.state = State::Delimited;
            return Ok(true);
        }
        let drop = self.buf.len().saturating_sub(self.keep());
        let dropped = dropped + drop;
        if dropped > self.bounds.max_preamble_bytes {
            return Err(Error::PreambleTooLong {
                limit: self.bounds.max_preamble_bytes,
            });
        }
        self.buf.advance(drop);
        self.state = State::Preamble(dropped);
        Ok(false)
    }

    fn delimited(&mut self) -> Result<Option<Event>, Error> {
        if self.buf.len() < 2 {
            return Ok(None);
        }
        if self.buf.starts_with(b"--") {
            self.state = State::Done;
            self.buf.clear();
            return Ok(Some(Event::End));
        }
        // Transport padding (spaces and tabs) may follow a boundary; it counts as head bytes.
        let padding = self
            .buf
            .iter()
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count();
        if padding > self.bounds.max_head_bytes {
            return Err(Error::HeadTooLong {
                limit: self.bounds.max_head_bytes,
            });
        }
        if padding + 2 > self.buf.len() {
            return Ok(None);
        }
        if &self.buf[padding..padding + 2] != b"\r\n" {
            return Err(Error::BadHead(
                "a boundary is not followed by a line break".into(),
            ));
        }
        self.buf.advance(padding);
        if self.parts == self.bounds.max_parts {
            return Err(Error::TooManyParts {
                limit: self.bounds.max_parts,
            });
        }
        self.state = State::Head;
        self.head()
    }

    /// The header block runs from the boundary line's CRLF to the blank line (CRLF CRLF), so a
    /// part without headers is just CRLF CRLF.
    fn head(&mut self) -> Result<Option<Event>, Error> {
        let limit = self.bounds.max_head_bytes;
        let window = &self.buf[..self.buf.len().min(limit + 4)];
        let Some(end) = memmem::find(window, b"\r\n\r\n") else {
            if self.buf.len() >= limit + 4 {
                return Err(Error::HeadTooLong { limit });
            }
            return Ok(None);
        };
        let block = self.buf.split_to(end + 4);
        let head = parse_head(&block[2..end + 2])?;
        self.parts += 1;
        self.state = State::Body;
        Ok(Some(Event::Part(head)))
    }

    fn body(&mut self) -> Result<Option<Event>, Error> {
        if let Some(at) = self.finder.find(&self.buf) {
            let data = self.buf.split_to(at).freeze();
            self.buf.advance(self.delimiter.len());
            self.state = State::Delimited;
            if data.is_empty() {
                return self.next_event();
            }
            return Ok(Some(Event::Data(data)));
        }
        let ready = self.buf.len().saturating_sub(self.keep());
        if ready > 0 {
            return Ok(Some(Event::Data(self.buf.split_to(ready).freeze())));
        }
        if self.ended {
            return Err(Error::Truncated);
        }
        Ok(None)
    }
}

/// A part's header lines (each `Name: value` ending in CRLF).
fn parse_head(block: &[u8]) -> Result<PartHead, Error> {
    let text = std::str::from_utf8(block)
        .map_err(|_| Error::BadHead("a header line is not UTF-8".into()))?;
    let mut disposition = None;
    for line in text.split("\r\n").filter(|line| !line.is_empty()) {
        if line.starts_with([' ', '\t']) {
            return Err(Error::BadHead(
                "folded header lines are not accepted".into(),
            ));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| Error::BadHead("a header line has no ':'".into()))?;
        if name.trim().eq_ignore_ascii_case("content-disposition") {
            if disposition.is_some() {
                return Err(Error::BadHead("Content-Disposition is given twice".into()));
            }
            disposition = Some(value.trim());
        }
    }
    let disposition =
        disposition.ok_or_else(|| Error::BadHead("a part has no Content-Disposition".into()))?;
    let mut params = split_params(disposition);
    if !params
        .next()
        .is_some_and(|kind| kind.trim().eq_ignore_ascii_case("form-data"))
    {
        return Err(Error::BadHead(
            "a part's Content-Disposition is not form-data".into(),
        ));
    }
    let (mut name, mut file_name) = (None, None);
    for param in params {
        let Some((key, value)) = param.split_once('=') else {
            continue;
        };
        let slot = match key.trim().to_ascii_lowercase().as_str() {
            "name" => &mut name,
            "filename" => &mut file_name,
            _ => continue,
        };
        if slot.is_some() {
            return Err(Error::BadHead(format!(
                "the parameter '{}' is given twice",
                key.trim()
            )));
        }
        *slot = Some(
            unquote(value.trim())
                .ok_or_else(|| Error::BadHead("an unterminated quoted parameter".into()))?,
        );
    }
    let name = name.ok_or_else(|| Error::BadHead("a part has no name".into()))?;
    Ok(PartHead { name, file_name })
}

/// Splits `value; key=value; key="va;lue"` at the semicolons outside quotes.
fn split_params(value: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(value);
    std::iter::from_fn(move || {
        let text = rest?;
        let mut quoted = false;
        let mut escaped = false;
        for (i, c) in text.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                ';' if !quoted => {
                    rest = Some(&text[i + 1..]);
                    return Some(&text[..i]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(text)
    })
}

/// A parameter value: a token, or a quoted string with backslash escapes. `None` when a
/// quoted string is not terminated.
fn unquote(value: &str) -> Option<String> {
    let Some(inner) = value.strip_prefix('"') else {
        return Some(value.to_owned());
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return chars.as_str().trim().is_empty().then_some(out),
            '\\' => out.push(chars.next()?),
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests;
