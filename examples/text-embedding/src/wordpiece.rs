//! BERT's tokenization, as MiniLM's `tokenizer.json` describes it: the BERT normalizer
//! (clean control characters, lower-case, strip accents, space out CJK ideographs), the BERT
//! pre-tokenizer (split on whitespace and punctuation), then greedy longest-match WordPiece
//! with `##` continuations and `[UNK]` for words it cannot cover.

use std::collections::HashMap;

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// Words longer than this (in characters) become `[UNK]`, as in BERT.
const MAX_WORD_CHARS: usize = 100;

/// A WordPiece vocabulary: token → id (the line number in `vocab.txt`).
pub struct WordPiece {
    ids: HashMap<&'static str, i64>,
    unk: i64,
    pub cls: i64,
    pub sep: i64,
    pub pad: i64,
}

impl WordPiece {
    pub fn new(vocab: &'static str) -> Self {
        let ids: HashMap<&'static str, i64> = vocab
            .lines()
            .enumerate()
            .map(|(i, token)| (token, i as i64))
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
