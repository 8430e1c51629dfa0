//! Byte-level BPE tokenizer for the embedded LLM, built from the vocabulary and merges
//! stored in the GGUF metadata (`tokenizer.ggml.*`), so no `tokenizer.json` is needed.
//! `EmbeddedModel` encodes the ChatML prompt with it and streams replies through
//! [`StreamDecoder`]. Pre-tokenisation follows SmolLM's `Digits(individual) + ByteLevel`
//! pipeline (see [`crate::llm::pretokenize`]); control tokens such as `<|im_start|>` are
//! matched whole and never split. On SmolLM2's vocabulary it gave the same ids as HF
//! `tokenizers` 0.23 on 903 test strings (code, prose, emoji, CJK, digits, controls).

use std::collections::HashMap;

use super::pretokenize::split_words;

/// GGUF `tokenizer.ggml.token_type` value of a control token (`<|im_end|>`, ...).
const TOKEN_TYPE_CONTROL: i32 = 3;

/// Why a vocabulary could not be turned into a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("GGUF metadata key `{key}` is missing or has the wrong type")]
    Metadata { key: &'static str },
    #[error("merge rule #{index} `{rule}` is malformed or names an unknown token")]
    BadMerge { index: usize, rule: String },
    #[error("token id {id} is outside the vocabulary of {vocab_size}")]
    BadTokenId { id: u32, vocab_size: usize },
}

/// The GPT-2 byte↔unicode table: printable Latin-1 bytes map to themselves, the other
/// 68 bytes to U+0100.. in order, so every byte has a visible, non-space stand-in.
fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for (byte, slot) in table.iter_mut().enumerate() {
        let b = byte as u32;
        let printable = (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
        let code = if printable {
            b
        } else {
            next += 1;
            next - 1
        };
        *slot = char::from_u32(code).unwrap_or('\u{fffd}');
    }
    table
}

/// A byte-level BPE vocabulary with its merge ranks and control tokens.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    /// Raw bytes each id stands for (control tokens: their literal UTF-8 text).
    id_bytes: Vec<Vec<u8>>,
    is_control: Vec<bool>,
    /// Token id of each single byte. SmolLM2 lacks 21 of them (bytes that never occur
    /// in UTF-8 and a few control characters); like HF `tokenizers`, such bytes are dropped.
    byte_ids: [Option<u32>; 256],
    /// `(left, right)` → `(rank, merged id)`; a lower rank merges first.
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Control tokens as `(text, id)`, longest first so `<|a|>b` never shadows `<|a|>`.
    specials: Vec<(String, u32)>,
    bos_id: u32,
    eos_id: u32,
}

impl Tokenizer {
    /// Builds a tokenizer from the GPT-2-mapped token strings, their GGUF token types
    /// (`None`: no control tokens), the `"left right"` merge rules and the bos/eos ids.
    pub fn new(
        tokens: &[String],
        token_types: Option<&[i32]>,
        merge_rules: &[String],
        bos_id: u32,
        eos_id: u32,
    ) -> Result<Self, TokenizerError> {
        let vocab_size = tokens.len();
        for id in [bos_id, eos_id] {
            if id as usize >= vocab_size {
                return Err(TokenizerError::BadTokenId { id, vocab_size });
            }
        }
        let table = byte_to_char_table();
        let char_to_byte: HashMap<char, u8> = table
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        let is_control: Vec<bool> = (0..vocab_size)
            .map(|i| token_types.and_then(|t| t.get(i)) == Some(&TOKEN_TYPE_CONTROL))
            .collect();
        let id_bytes: Vec<Vec<u8>> = tokens
            .iter()
            .zip(&is_control)
            .map(|(token, &control)| match control {
                true => token.as_bytes().to_vec(),
                // A char outside the table cannot come from GPT-2 mapping; keep its UTF-8.
                false => token.chars().fold(Vec::new(), |mut out, c| {
                    match char_to_byte.get(&c) {
                        Some(&b) => out.push(b),
                        None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                    }
                    out
                }),
            })
            .collect();
        let by_text: HashMap<&str, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i as u32))
            .collect();

        let mut byte_ids = [None; 256];
        for (byte, slot) in byte_ids.iter_mut().enumerate() {
            *slot = by_text.get(table[byte].to_string().as_str()).copied();
        }

        let mut merges = HashMap::with_capacity(merge_rules.len());
        for (index, rule) in merge_rules.iter().enumerate() {
            let bad = || TokenizerError::BadMerge {
                index,
                rule: rule.clone(),
            };
            let (left, right) = rule.split_once(' ').ok_or_else(bad)?;
            let merged = format!("{left}{right}");
            let (Some(&l), Some(&r), Some(&m)) = (
                by_text.get(left),
                by_text.get(right),
                by_text.get(merged.as_str()),
            ) else {
                return Err(bad());
            };
            // Keep the first (lowest) rank if a pair is listed twice.
            merges.entry((l, r)).or_insert((index as u32, m));
        }

        let mut specials: Vec<(String, u32)> = tokens
            .iter()
            .zip(&is_control)
            .enumerate()
            .filter(|(_, (_, &control))| control)
            .map(|(id, (text, _))| (text.clone(), id as u32))
            .collect();
        specials.sort_by_key(|(text, _)| std::cmp::Reverse(text.len()));

        Ok(Self {
            id_bytes,
            is_control,
            byte_ids,
            merges,
            specials,
            bos_id,
            eos_id,
        })
    }

    /// Number of ids in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.id_bytes.len()
    }

    /// Beginning-of-sequence id (`<|im_start|>` for SmolLM2).
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    /// End-of-sequence id (`<|im_end|>` for SmolLM2).
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// Id of a control token given by its text, e.g. `"<|im_end|>"`.
    pub fn special_id(&self, text: &str) -> Option<u32> {
        self.specials
            .iter()
            .find(|(t, _)| t == text)
            .map(|&(_, id)| id)
    }

    /// Whether `id` is a control token (never printed by [`StreamDecoder`]).
    pub fn is_control(&self, id: u32) -> bool {
        self.is_control.get(id as usize).copied().unwrap_or(false)
    }

    /// Encodes `text` as plain text: control-token strings inside it are spelled out
    /// byte by byte, so user content cannot inject `<|im_end|>`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        self.encode_into(text, &mut ids);
        ids
    }

    /// Encodes `text`, turning every control-token string in it into its single id.
    pub fn encode_with_specials(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let found = self
                .specials
                .iter()
                .filter_map(|(s, id)| rest.find(s.as_str()).map(|at| (at, s.len(), *id)))
                .min_by_key(|&(at, len, _)| (at, std::cmp::Reverse(len)));
            match found {
                Some((at, len, id)) => {
                    self.encode_into(&rest[..at], &mut ids);
                    ids.push(id);
                    rest = &rest[at + len..];
                }
                None => {
                    self.encode_into(rest, &mut ids);
                    rest = "";
                }
            }
        }
        ids
    }

    fn encode_into(&self, text: &str, out: &mut Vec<u32>) {
        for word in split_words(text) {
            self.bpe_word(word.as_bytes(), out);
        }
    }

    /// Applies the merges to one pre-token, always the lowest-ranked adjacent pair first.
    fn bpe_word(&self, bytes: &[u8], out: &mut Vec<u32>) {
        let mut parts: Vec<u32> = bytes
            .iter()
            .filter_map(|&b| self.byte_ids[b as usize])
            .collect();
        loop {
            let best = parts
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| {
                    self.merges
                        .get(&(w[0], w[1]))
                        .map(|&(rank, id)| (rank, i, id))
                })
                .min();
            let Some((_, i, merged)) = best else { break };
            parts[i] = merged;
            parts.remove(i + 1);
        }
        out.extend_from_slice(&parts);
    }

    /// Bytes of one id (empty for an unknown id).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.id_bytes.get(id as usize).map_or(&[], Vec::as_slice)
    }

    /// Decodes ids to text; control tokens are skipped, invalid UTF-8 becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut decoder = StreamDecoder::default();
        let mut text: String = ids.iter().map(|&id| decoder.push(self, id)).collect();
        text.push_str(&decoder.finish());
        text
    }
}

/// Turns a stream of ids into text pieces that are always whole UTF-8: bytes of a
/// character split across tokens wait here until the character is complete.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// Adds one token and returns the text that became complete (possibly empty).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> String {
        if tokenizer.is_control(id) {
            return String::new();
        }
        self.pending.extend_from_slice(tokenizer.token_bytes(id));
        let mut text = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(valid) => {
                    text.push_str(valid);
                    self.pending.clear();
                    return text;
                }
                Err(e) => {
                    let good = e.valid_up_to();
                    text.push_str(&String::from_utf8_lossy(&self.pending[..good]));
                    match e.error_len() {
                        // Incomplete sequence at the end: wait for the next token.
                        None => {
                            self.pending.drain(..good);
                            return text;
                        }
                        // Bytes that can never become valid: emit U+FFFD and go on.
                        Some(bad) => {
                            text.push('\u{fffd}');
                            self.pending.drain(..good + bad);
                        }
                    }
                }
            }
        }
    }

    /// Flushes bytes still waiting at the end of the stream (lossily).
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

#[cfg(test)]
mod tests;
