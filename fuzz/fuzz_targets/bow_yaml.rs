//! Fuzz target: reading bow.yaml. `bow_spec::load` and `bow_spec::validate` take any text
//! without panicking and within the reader's budgets (aliases, nesting, size, keys).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // Non-UTF-8 input is refused before parsing, with a position; the parser sees text.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = bow_spec::load(text, &bow_spec::LoadOptions::default());
    let _ = bow_spec::validate(text, false);
});
