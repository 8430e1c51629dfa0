//! Pre-tokenisation for the byte-level BPE [`Tokenizer`](super::tokenizer::Tokenizer):
//! cuts text into the words that BPE merges never cross. It reproduces SmolLM's
//! pipeline (llama.cpp pre-tokenizer `smollm`): every numeric character stands alone,
//! then each remaining stretch is split like the GPT-2 pattern
//! `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
//! Hand-written because the `regex` crate has no look-ahead; `\p{L}` is approximated by
//! `char::is_alphabetic`, `\p{N}` by `char::is_numeric`, `\s` by `char::is_whitespace`.

/// Contraction suffixes matched after an ASCII apostrophe (case-sensitive, as in GPT-2).
const CONTRACTIONS: [&str; 7] = ["s", "t", "re", "ve", "m", "ll", "d"];

/// Splits `text` into pre-tokens; concatenated they give back `text` exactly.
pub fn split_words(text: &str) -> Vec<&str> {
    let mut words = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if c.is_numeric() {
            split_gpt2(&text[start..i], &mut words);
            let end = i + c.len_utf8();
            words.push(&text[i..end]);
            start = end;
        }
    }
    split_gpt2(&text[start..], &mut words);
    words
}

/// What the GPT-2 pattern sees in a character (digits were cut out before).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Letter,
    Space,
    Other,
}

fn class(c: char) -> Class {
    if c.is_alphabetic() {
        Class::Letter
    } else if c.is_whitespace() {
        Class::Space
    } else {
        Class::Other
    }
}

/// GPT-2 split of a stretch without numeric characters.
fn split_gpt2<'a>(text: &'a str, words: &mut Vec<&'a str>) {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let byte_at = |k: usize| chars.get(k).map_or(text.len(), |&(b, _)| b);
    let run_end = |from: usize, want: Class| {
        (from..chars.len())
            .find(|&k| class(chars[k].1) != want)
            .unwrap_or(chars.len())
    };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i].1;
        let next = chars.get(i + 1).map(|&(_, n)| class(n));
        let end = if let Some(len) = contraction_len(&text[byte_at(i)..]) {
            i + len
        } else if c == ' ' && matches!(next, Some(Class::Letter | Class::Other)) {
            // ` ?\p{L}+` or ` ?[^\s\p{L}\p{N}]+`: the space joins the following run.
            next.map_or(i + 1, |n| run_end(i + 1, n))
        } else if class(c) == Class::Space {
            let ws_end = run_end(i, Class::Space);
            if ws_end == chars.len() || ws_end - i == 1 {
                // `\s+(?!\S)` at the end of text, or a lone `\s+` before a word.
                ws_end
            } else {
                // `\s+(?!\S)` backs off one character, which then prefixes the word.
                ws_end - 1
            }
        } else {
            run_end(i, class(c))
        };
        words.push(&text[byte_at(i)..byte_at(end)]);
        i = end;
    }
}

/// Length in chars of a contraction (`'s`, `'ll`, ...) at the start of `rest`.
fn contraction_len(rest: &str) -> Option<usize> {
    let tail = rest.strip_prefix('\'')?;
    CONTRACTIONS
        .iter()
        .find(|s| tail.starts_with(*s))
        .map(|s| 1 + s.len())
}

#[cfg(test)]
mod tests {
    use super::split_words;

    #[test]
    fn splits_like_gpt2_with_single_digits() {
        let cases: [(&str, &[&str]); 7] = [
            ("Hello world", &["Hello", " world"]),
            ("don't stop", &["don", "'t", " stop"]),
            ("a  b", &["a", " ", " b"]),
            ("line\nnext", &["line", "\n", "next"]),
            ("year 2024!", &["year", " ", "2", "0", "2", "4", "!"]),
            ("end.  ", &["end", ".", "  "]),
            ("héllo, wörld?!", &["héllo", ",", " wörld", "?!"]),
        ];
        for (text, expected) in cases {
            assert_eq!(split_words(text), expected, "splitting {text:?}");
        }
    }

    #[test]
    fn pieces_concatenate_to_input() {
        let text = " \n\tMixed 12 'll  'S ... ünïcode\u{1F600} x\n\n y ";
        assert_eq!(split_words(text).concat(), text);
    }
}
