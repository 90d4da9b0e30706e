//! The TOML config loader: arbitrary text never panics, and every problem names a line of
//! the text (or, for a key the file does not have, names that key).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = turnd::config::load_str(text, Path::new("fuzz.toml")) {
        assert!(!e.problems.is_empty());
        let lines = text.split('\n').count();
        for p in &e.problems {
            assert!(!p.message.is_empty(), "{p}");
            match p.line {
                Some(l) => assert!((1..=lines).contains(&l), "line {l} of {lines}: {p}"),
                None => assert!(!p.key.is_empty(), "neither line nor key: {p}"),
            }
        }
    }
});
