//! Fuzz target: the chunked body decoder, fed whole and in pieces
//! (`bow_edge::fuzzing::chunked_body`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bow_edge::fuzzing::chunked_body(data));
