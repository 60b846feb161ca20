//! Fuzz target: the path normaliser and the route matcher
//! (`bow_edge::fuzzing::path_and_route`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bow_edge::fuzzing::path_and_route(data));
