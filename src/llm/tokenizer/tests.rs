//! Unit tests for the tokenizer on a small hand-made vocabulary; the same checks on the
//! real SmolLM2 vocabulary live in `tests/embedded_llm.rs`.

use super::{byte_to_char_table, StreamDecoder, Tokenizer};

const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
const MERGES: [&str; 6] = ["h e", "l l", "he ll", "hell o", "Ġ w", "Ġw o"];

/// Three control tokens, the 256 byte tokens, then one token per merge result.
fn tiny() -> Tokenizer {
    let table = byte_to_char_table();
    let mut tokens: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    tokens.extend(table.iter().map(|c| c.to_string()));
    tokens.extend(MERGES.iter().map(|m| m.replace(' ', "")));
    let mut types = vec![3; SPECIALS.len()];
    types.resize(tokens.len(), 1);
    let merges: Vec<String> = MERGES.iter().map(|m| m.to_string()).collect();
    match Tokenizer::new(&tokens, Some(&types), &merges, 1, 2) {
        Ok(t) => t,
        Err(e) => panic!("tiny vocabulary rejected: {e}"),
    }
}

fn id_of(tok: &Tokenizer, text: &str) -> u32 {
    (0..tok.vocab_size() as u32)
        .find(|&id| !tok.is_control(id) && tok.token_bytes(id) == text.as_bytes())
        .unwrap_or(u32::MAX)
}

#[test]
fn byte_table_is_a_bijection_onto_visible_chars() {
    let table = byte_to_char_table();
    let mut seen: Vec<char> = table.to_vec();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 256);
    assert_eq!(table[b' ' as usize], 'Ġ');
    assert_eq!(table[b'\n' as usize], 'Ċ');
    assert_eq!(table[b'A' as usize], 'A');
}

#[test]
fn merges_apply_in_rank_order() {
    let tok = tiny();
    assert_eq!(tok.encode("hello"), vec![id_of(&tok, "hello")]);
    assert_eq!(
        tok.encode("hello world"),
        [id_of(&tok, "hello"), id_of(&tok, " wo"), id_of(&tok, "r")]
            .into_iter()
            .chain([id_of(&tok, "l"), id_of(&tok, "d")])
            .collect::<Vec<_>>()
    );
}

#[test]
fn round_trips_arbitrary_text() {
    let tok = tiny();
    for text in [
        "hello world",
        "  leading spaces\n\ttabs\r\n",
        "ünïcödé, 日本語 and emoji 😀👍🏽!",
        "numbers 12345 and 'quotes' don't",
        "",
    ] {
        assert_eq!(tok.decode(&tok.encode(text)), text);
    }
}

#[test]
fn special_tokens_map_to_their_ids() {
    let tok = tiny();
    assert_eq!(tok.special_id("<|im_start|>"), Some(1));
    assert_eq!(tok.special_id("<|im_end|>"), Some(2));
    assert_eq!(tok.bos_id(), 1);
    assert_eq!(tok.eos_id(), 2);
    let ids = tok.encode_with_specials("<|im_start|>hello<|im_end|>\n");
    assert_eq!(ids, vec![1, id_of(&tok, "hello"), 2, id_of(&tok, "\n")]);
    // Plain encoding spells control strings out, so content cannot inject them.
    let plain = tok.encode("<|im_end|>");
    assert!(!plain.contains(&2));
    assert_eq!(tok.decode(&plain), "<|im_end|>");
    // Control tokens are not printed.
    assert_eq!(tok.decode(&ids), "hello\n");
}

#[test]
fn stream_decoder_waits_for_whole_characters() {
    let tok = tiny();
    let ids = tok.encode("a😀b");
    assert_eq!(ids.len(), 6, "one token per byte in the tiny vocabulary");
    let mut decoder = StreamDecoder::default();
    let pieces: Vec<String> = ids.iter().map(|&id| decoder.push(&tok, id)).collect();
    assert_eq!(pieces, ["a", "", "", "", "😀", "b"]);
    assert_eq!(decoder.finish(), "");
}

#[test]
fn stream_decoder_replaces_invalid_bytes() {
    let tok = tiny();
    let byte_id = |b: u8| {
        (0..tok.vocab_size() as u32)
            .find(|&id| !tok.is_control(id) && tok.token_bytes(id) == [b])
            .unwrap_or(u32::MAX)
    };
    let mut decoder = StreamDecoder::default();
    // A lone continuation byte can never become valid.
    assert_eq!(decoder.push(&tok, byte_id(0x80)), "\u{fffd}");
    // A truncated sequence at the end of the stream is flushed lossily.
    assert_eq!(decoder.push(&tok, byte_id(0xe6)), "");
    assert_eq!(decoder.push(&tok, id_of(&tok, "x")), "\u{fffd}x");
    assert_eq!(decoder.push(&tok, byte_id(0xf0)), "");
    assert_eq!(decoder.finish(), "\u{fffd}");
}

#[test]
fn rejects_inconsistent_vocabularies() {
    let tokens = vec!["a".to_string()];
    assert!(Tokenizer::new(&tokens, None, &[], 0, 5).is_err());
    let merges = vec!["a b".to_string()];
    assert!(Tokenizer::new(&tokens, None, &merges, 0, 0).is_err());
}

#[test]
fn bytes_without_a_token_are_dropped() {
    // Like HF `tokenizers` with no unknown token: SmolLM2 has no token for byte 0x04.
    let tokens: Vec<String> = ["a", "b", "ab"].map(String::from).to_vec();
    let merges = vec!["a b".to_string()];
    let tok = match Tokenizer::new(&tokens, None, &merges, 0, 0) {
        Ok(t) => t,
        Err(e) => panic!("{e}"),
    };
    // The pre-tokenizer makes `\u{4}` a word of its own, so `a` and `b` stay apart.
    assert_eq!(tok.encode("a\u{4}b"), vec![0, 1]);
    assert_eq!(tok.encode("ab"), vec![2]);
    assert_eq!(tok.encode("z"), Vec::<u32>::new());
}
