//! Speech scores, flushes and end-of-turn verdicts through the segmenter.
//! The body lives in `hearken::fuzzing::segmenter`, which `tests/fuzz_corpus.rs` replays.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hearken::fuzzing::segmenter(data));
