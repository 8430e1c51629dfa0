//! PCM16 and Opus frames at every session rate through the audio front end.
//! The body lives in `hearken::fuzzing::ingest`, which `tests/fuzz_corpus.rs` replays.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hearken::fuzzing::ingest(data));
