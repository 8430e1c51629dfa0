//! The query string of `GET /v1/ws` through the upgrade's query parser and validation.
//! The body lives in `hearken::fuzzing::upgrade_query`, which `tests/fuzz_corpus.rs` replays.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hearken::fuzzing::upgrade_query(data));
