//! Text in, token ids out (feature `text`): BERT's tokenization, as MiniLM's and most BERT
//! models' `tokenizer.json` describe it: the BERT normalizer (clean control characters,
//! lower-case, strip accents, space out CJK ideographs), the BERT pre-tokenizer (split on
//! whitespace and punctuation), then greedy longest-match WordPiece with `##` continuations and
//! `[UNK]` for words it cannot cover.
//!
//! ```no_run
//! use corral_guest::text::WordPiece;
//!
//! let vocab = WordPiece::from_lines("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n##s");
//! let ids = vocab.encode("Hellos"); // [4, 5]
//! ```

use std::collections::HashMap;

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// Words longer than this (in characters) become `[UNK]`, as in BERT.
const MAX_WORD_CHARS: usize = 100;

/// A WordPiece vocabulary: token → id (its position in the vocabulary).
pub struct WordPiece {
    ids: HashMap<String, i64>,
    unk: i64,
    /// The id of `[CLS]`, which starts a sequence.
    pub cls: i64,
    /// The id of `[SEP]`, which ends one.
    pub sep: i64,
    /// The id of `[PAD]`, which fills a sequence to its length.
    pub pad: i64,
}

impl WordPiece {
    /// The vocabulary of a `vocab.txt`: one token per line, its id the line number.
    pub fn from_lines(vocab: &str) -> Self {
        Self::new(vocab.lines())
    }

    /// The vocabulary of `tokens`, each id its position.
    pub fn new<S: Into<String>>(tokens: impl IntoIterator<Item = S>) -> Self {
        let ids: HashMap<String, i64> = tokens
            .into_iter()
            .enumerate()
            .map(|(i, token)| (token.into(), i as i64))
            .collect();
        let id = |token: &str| ids.get(token).copied().unwrap_or(0);
        Self {
            unk: id("[UNK]"),
            cls: id("[CLS]"),
            sep: id("[SEP]"),
            pad: id("[PAD]"),
            ids,
        }
    }

    /// The WordPiece ids of `text`, without special tokens.
    pub fn encode(&self, text: &str) -> Vec<i64> {
        let mut out = Vec::new();
        for word in pre_tokenize(&normalize(text)) {
            self.word(&word, &mut out);
        }
        out
    }

    fn word(&self, word: &str, out: &mut Vec<i64>) {
        let chars: Vec<char> = word.chars().collect();
        if chars.len() > MAX_WORD_CHARS {
            out.push(self.unk);
            return;
        }
        let mut pieces = Vec::new();
        let mut start = 0;
        while start < chars.len() {
            let mut end = chars.len();
            let mut found = None;
            while start < end {
                let piece: String = chars[start..end].iter().collect();
                let piece = if start > 0 {
                    format!("##{piece}")
                } else {
                    piece
                };
                if let Some(id) = self.ids.get(piece.as_str()) {
                    found = Some(*id);
                    break;
                }
                end -= 1;
            }
            match found {
                Some(id) => pieces.push(id),
                None => {
                    out.push(self.unk);
                    return;
                }
            }
            start = end;
        }
        out.extend(pieces);
    }
}

/// The BERT normalizer with `lowercase` (which implies stripping accents).
fn normalize(text: &str) -> String {
    let mut cleaned = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\0' || c == '\u{fffd}' || (c.is_control() && !c.is_whitespace()) {
            continue;
        }
        if c.is_whitespace() {
            cleaned.push(' ');
        } else if is_cjk(c) {
            cleaned.push(' ');
            cleaned.push(c);
            cleaned.push(' ');
        } else {
            cleaned.push(c);
        }
    }
    cleaned
        .to_lowercase()
        .nfd()
        .filter(|c| !is_combining_mark(*c))
        .collect()
}

/// Whitespace-separated words, with every punctuation character a word of its own.
fn pre_tokenize(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    for chunk in text.split_whitespace() {
        let mut current = String::new();
        for c in chunk.chars() {
            if is_punctuation(c) {
                if !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
                words.push(c.to_string());
            } else {
                current.push(c);
            }
        }
        if !current.is_empty() {
            words.push(current);
        }
    }
    words
}

/// BERT's punctuation: all non-alphanumeric ASCII symbols, plus Unicode punctuation blocks.
fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation()
        || matches!(c as u32, 0x2000..=0x206F | 0x3000..=0x303F | 0xFF00..=0xFF0F | 0xFF1A..=0xFF20)
        || matches!(c, '¡' | '§' | '«' | '¶' | '·' | '»' | '¿')
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F | 0x2B820..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}

/// The mean of the first `length` rows of `hidden` (rows of `dim` values: a model's
/// per-token vectors), L2-normalized: a sentence embedding.
pub fn mean_pooled(hidden: &[f32], length: usize, dim: usize) -> Vec<f32> {
    let mut vector = vec![0f32; dim];
    for row in hidden.chunks_exact(dim).take(length) {
        for (sum, value) in vector.iter_mut().zip(row) {
            *sum += value;
        }
    }
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt() + 1e-9;
    vector.iter().map(|v| v / norm).collect()
}

/// The sentences of a `{"sentences": ["...", ...]}` body: 1 to `max` of them, each at most
/// `max_bytes`; otherwise a message a client can act on.
pub fn read_sentences(body: &[u8], max: usize, max_bytes: usize) -> Result<Vec<String>, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let sentences = value["sentences"]
        .as_array()
        .ok_or("expected {\"sentences\": [\"...\", ...]}")?;
    if sentences.is_empty() || sentences.len() > max {
        return Err(format!("send 1 to {max} sentences"));
    }
    sentences
        .iter()
        .map(|s| match s.as_str() {
            Some(text) if text.len() <= max_bytes => Ok(text.to_owned()),
            Some(_) => Err(format!("a sentence is longer than {max_bytes} bytes")),
            None => Err("every sentence must be a string".to_owned()),
        })
        .collect()
}

/// Every pair's cosine similarity, for normalized embeddings (their dot products).
pub fn similarity(embeddings: &[Vec<f32>]) -> Vec<Vec<f32>> {
    embeddings
        .iter()
        .map(|a| {
            embeddings
                .iter()
                .map(|b| a.iter().zip(b).map(|(x, y)| x * y).sum())
                .collect()
        })
        .collect()
}
