//! Decoder for Moonshine's `tokenizer.bin`: token ids from the STT decoder
//! become text. The file is a list of entries, the entry's index being its
//! token id; each entry is a length then that many bytes. The length is one
//! byte when below 128; otherwise two bytes, `second * 128 + first - 128`
//! (the format of Moonshine's C++ `BinTokenizer`; base-en uses one byte only).
//! Ids 0..=2 (`<unk>`, `<s>`, `</s>`) are control tokens and never printed;
//! `▁` (U+2581) marks a word boundary and becomes a space.

use std::path::Path;

use super::ModelError;

/// Ids below this are control tokens: 0 `<unk>`, 1 `<s>`, 2 `</s>`.
const FIRST_TEXT_ID: usize = 3;

/// SentencePiece's word-boundary marker.
const WORD_BOUNDARY: &str = "\u{2581}";

/// Token id → the token's bytes (byte-fallback tokens are single raw bytes,
/// so multi-byte characters are reassembled by concatenation).
#[derive(Debug, Clone)]
pub struct Tokenizer {
    tokens: Vec<Vec<u8>>,
}

impl Tokenizer {
    /// Reads and parses `tokenizer.bin`.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let data = std::fs::read(path).map_err(|e| ModelError::Tokenizer {
            path: path.to_path_buf(),
            cause: e.to_string(),
        })?;
        Self::from_bytes(&data).map_err(|cause| ModelError::Tokenizer {
            path: path.to_path_buf(),
            cause,
        })
    }

    /// Parses the contents of a `tokenizer.bin`.
    pub fn from_bytes(data: &[u8]) -> Result<Self, String> {
        let mut tokens = Vec::new();
        let mut at = 0;
        while at < data.len() {
            let first = usize::from(data[at]);
            at += 1;
            let len = if first < 128 {
                first
            } else {
                let second = *data
                    .get(at)
                    .ok_or_else(|| format!("entry {} ends inside its length", tokens.len()))?;
                at += 1;
                usize::from(second) * 128 + first - 128
            };
            let bytes = data.get(at..at + len).ok_or_else(|| {
                format!(
                    "entry {} wants {len} bytes at offset {at}; the file has {}",
                    tokens.len(),
                    data.len()
                )
            })?;
            tokens.push(bytes.to_vec());
            at += len;
        }
        if tokens.len() <= FIRST_TEXT_ID {
            return Err(format!("only {} entries; not a tokenizer", tokens.len()));
        }
        Ok(Self { tokens })
    }

    /// Number of entries (token ids) in the vocabulary.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Always false for a loaded tokenizer; here for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Text of a sequence of ids. Control ids and ids outside the vocabulary
    /// (the decoder's logits are wider than it) are skipped; invalid UTF-8 is
    /// replaced rather than failing a transcript.
    pub fn decode(&self, ids: &[i64]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            let Ok(id) = usize::try_from(id) else {
                continue;
            };
            if id < FIRST_TEXT_ID {
                continue;
            }
            if let Some(token) = self.tokens.get(id) {
                bytes.extend_from_slice(token);
            }
        }
        String::from_utf8_lossy(&bytes)
            .replace(WORD_BOUNDARY, " ")
            .trim()
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a tokenizer file from entries, using the two-byte length for
    /// entries of 128 bytes or more.
    fn file_of(entries: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for entry in entries {
            let len = entry.len();
            if len < 128 {
                out.push(len as u8);
            } else {
                out.push((len % 128 + 128) as u8);
                out.push((len / 128) as u8);
            }
            out.extend_from_slice(entry);
        }
        out
    }

    fn tiny() -> Tokenizer {
        let entries: [&[u8]; 9] = [
            b"<unk>",
            b"<s>",
            b"</s>",
            "\u{2581}Hello".as_bytes(),
            b",",
            "\u{2581}world".as_bytes(),
            b"!",
            &[0xC3],
            &[0xA9],
        ];
        Tokenizer::from_bytes(&file_of(&entries)).expect("valid synthetic tokenizer")
    }

    #[test]
    fn decodes_words_and_boundaries() {
        let t = tiny();
        assert_eq!(t.len(), 9);
        assert_eq!(t.decode(&[1, 3, 4, 5, 6, 2]), "Hello, world!");
    }

    #[test]
    fn skips_control_and_out_of_range_ids() {
        let t = tiny();
        assert_eq!(t.decode(&[0, 1, 2, 5, 32_767, -1]), "world");
        assert_eq!(t.decode(&[]), "");
    }

    #[test]
    fn byte_fallback_tokens_join_into_characters() {
        let t = tiny();
        assert_eq!(t.decode(&[5, 7, 8]), "world\u{e9}");
        // A lone continuation byte does not fail the transcript.
        assert_eq!(t.decode(&[8]), "\u{fffd}");
    }

    #[test]
    fn two_byte_lengths_and_empty_entries() {
        let long = vec![b'a'; 300];
        let entries: [&[u8]; 5] = [b"<unk>", b"<s>", b"</s>", &[], &long];
        let t = Tokenizer::from_bytes(&file_of(&entries)).expect("valid");
        assert_eq!(t.len(), 5);
        assert_eq!(t.decode(&[3, 4]), "a".repeat(300));
    }

    #[test]
    fn truncated_file_is_an_error() {
        let mut data = file_of(&[b"<unk>", b"<s>", b"</s>", b"abc"]);
        data.pop();
        let err = Tokenizer::from_bytes(&data).expect_err("truncated");
        assert!(err.contains("entry 3"), "{err}");
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = Tokenizer::load(Path::new("/nonexistent/tokenizer.bin")).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/tokenizer.bin"));
    }
}
