//! A client text frame through the session's event parser.
//! The body lives in `hearken::fuzzing::client_event`, which `tests/fuzz_corpus.rs` replays.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hearken::fuzzing::client_event(data));
