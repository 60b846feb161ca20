//! Fuzz target: the edge's HTTP/1.1 request-head parser and the body framing it decides
//! (`bow_edge::fuzzing::request_head`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bow_edge::fuzzing::request_head(data));
