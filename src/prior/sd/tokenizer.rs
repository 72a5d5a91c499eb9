//! The CLIP byte-level BPE tokenizer (as transformers' `CLIPTokenizer` builds it from
//! `vocab.json` + `merges.txt`): whitespace collapsed and lower-cased, split by CLIP's pattern,
//! bytes mapped to unicode, BPE with `</w>` ending each word, `<|startoftext|>` … `<|endoftext|>`,
//! truncated and padded to `model_max_length` with the pad token of `tokenizer_config.json`.
//!
//! Special tokens (start, end and pad) written literally in a prompt are matched as themselves.
//! With SD 2.x's pad token `!` this turns a literal "!" into the id of `!` (0) instead of `!</w>`
//! (256), as the reference tokenizer does. Unicode NFC normalisation is not applied.

use crate::error::{Error, Result};
use regex::Regex;
use std::collections::HashMap;
use std::path::Path;

const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";

/// CLIP's pre-tokenizer pattern (the special tokens are split off before).
const PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

pub struct ClipTokenizer {
    vocab: HashMap<String, u32>,
    ranks: HashMap<(String, String), usize>,
    bytes: [char; 256],
    pattern: Regex,
    /// (text, id) of the start, end and pad tokens.
    specials: Vec<(String, u32)>,
    bos: u32,
    eos: u32,
    pad: u32,
    max_len: usize,
}

/// GPT-2 / CLIP's reversible byte → unicode table: printable bytes keep their code point, the
/// others get 256, 257, … in byte order.
fn byte_table() -> [char; 256] {
    let keep =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut t = ['\0'; 256];
    let mut extra = 0;
    for b in 0..256u32 {
        t[b as usize] = if keep(b) {
            char::from_u32(b).unwrap_or('\0')
        } else {
            extra += 1;
            char::from_u32(255 + extra).unwrap_or('\0')
        };
    }
    t
}

/// A token given as a string or as `{"content": …}` (transformers' AddedToken).
fn token_text(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::config(format!("{}: {e}", path.display())))
}

impl ClipTokenizer {
    /// Builds the tokenizer from a vocabulary, merges in rank order, the pad token and the
    /// maximum length (77 for Stable Diffusion).
    pub fn new(
        vocab: HashMap<String, u32>,
        merges: Vec<(String, String)>,
        pad_token: &str,
        max_len: usize,
    ) -> Result<Self> {
        let id = |t: &str| {
            vocab.get(t).copied().ok_or_else(|| {
                Error::config(format!(
                    "CLIP tokenizer: token {t:?} is not in the vocabulary"
                ))
            })
        };
        let (bos, eos, pad) = (id(BOS)?, id(EOS)?, id(pad_token)?);
        if max_len < 2 {
            return Err(Error::config(
                "CLIP tokenizer: model_max_length must be ≥ 2",
            ));
        }
        let mut specials = vec![(BOS.to_string(), bos), (EOS.to_string(), eos)];
        if pad_token != BOS && pad_token != EOS {
            specials.push((pad_token.to_string(), pad));
        }
        let ranks = merges
            .into_iter()
            .enumerate()
            .map(|(i, m)| (m, i))
            .collect();
        Ok(Self {
            vocab,
            ranks,
            bytes: byte_table(),
            pattern: Regex::new(PATTERN).map_err(|e| Error::msg(e.to_string()))?,
            specials,
            bos,
            eos,
            pad,
            max_len,
        })
    }

    /// Reads a `tokenizer/` folder: `vocab.json`, `merges.txt`, and the pad token and
    /// `model_max_length` from `tokenizer_config.json` (else `special_tokens_map.json`; defaults
    /// `<|endoftext|>` and 77).
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let vocab_path = dir.join("vocab.json");
        let vocab: HashMap<String, u32> = match read_json(&vocab_path)? {
            Some(v) => serde_json::from_value(v)
                .map_err(|e| Error::config(format!("{}: {e}", vocab_path.display())))?,
            None => {
                return Err(Error::config(format!(
                    "{}: missing (the CLIP vocabulary)",
                    vocab_path.display()
                )))
            }
        };
        let merges_path = dir.join("merges.txt");
        let text = std::fs::read_to_string(&merges_path).map_err(|source| Error::Io {
            path: merges_path.display().to_string(),
            source,
        })?;
        let merges = text
            .lines()
            .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
            .map(|l| match l.split_once(' ') {
                Some((a, b)) => Ok((a.to_string(), b.to_string())),
                None => Err(Error::config(format!(
                    "{}: bad merge line {l:?}",
                    merges_path.display()
                ))),
            })
            .collect::<Result<Vec<_>>>()?;
        let config = read_json(&dir.join("tokenizer_config.json"))?;
        let map = read_json(&dir.join("special_tokens_map.json"))?;
        let pad = token_text(config.as_ref().and_then(|c| c.get("pad_token")))
            .or_else(|| token_text(map.as_ref().and_then(|c| c.get("pad_token"))))
            .unwrap_or_else(|| EOS.to_string());
        let max_len = config
            .as_ref()
            .and_then(|c| c.get("model_max_length"))
            .and_then(|v| v.as_u64())
            .filter(|&n| n <= 1 << 20)
            .map_or(77, |n| n as usize);
        Self::new(vocab, merges, &pad, max_len)
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// BPE of one pre-tokenized word (already byte-mapped).
    fn bpe(&self, word: &str, out: &mut Vec<u32>) {
        let chars: Vec<char> = word.chars().collect();
        let mut parts: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
        if let Some(last) = parts.last_mut() {
            last.push_str("</w>");
        }
        loop {
            let best = (0..parts.len().saturating_sub(1))
                .filter_map(|i| {
                    self.ranks
                        .get(&(parts[i].clone(), parts[i + 1].clone()))
                        .map(|&r| (r, i))
                })
                .min();
            let Some((_, i)) = best else { break };
            let (a, b) = (parts[i].clone(), parts[i + 1].clone());
            // Merge every occurrence of the pair, left to right.
            let mut merged = Vec::with_capacity(parts.len());
            let mut j = 0;
            while j < parts.len() {
                if j + 1 < parts.len() && parts[j] == a && parts[j + 1] == b {
                    merged.push(format!("{a}{b}"));
                    j += 2;
                } else {
                    merged.push(parts[j].clone());
                    j += 1;
                }
            }
            parts = merged;
        }
        out.extend(parts.iter().filter_map(|p| self.vocab.get(p).copied()));
    }

    /// The ids of the text between special tokens.
    fn encode_plain(&self, text: &str, out: &mut Vec<u32>) {
        let norm = text
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase();
        for m in self.pattern.find_iter(&norm) {
            let word: String = m.as_str().bytes().map(|b| self.bytes[b as usize]).collect();
            self.bpe(&word, out);
        }
    }

    /// The token ids of `text` without start/end tokens.
    pub fn tokens(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        let mut rest = text;
        loop {
            let next = self
                .specials
                .iter()
                .filter_map(|(s, id)| rest.find(s.as_str()).map(|p| (p, s.len(), *id)))
                .min_by_key(|&(p, l, _)| (p, std::cmp::Reverse(l)));
            match next {
                Some((p, l, id)) => {
                    self.encode_plain(&rest[..p], &mut out);
                    out.push(id);
                    rest = &rest[p + l..];
                }
                None => {
                    self.encode_plain(rest, &mut out);
                    return out;
                }
            }
        }
    }

    /// `[bos, tokens…, eos, pad…]` of length `max_len`, the tokens truncated to `max_len − 2`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut t = self.tokens(text);
        t.truncate(self.max_len - 2);
        let mut ids = Vec::with_capacity(self.max_len);
        ids.push(self.bos);
        ids.extend(t);
        ids.push(self.eos);
        ids.resize(self.max_len, self.pad);
        ids
    }
}
