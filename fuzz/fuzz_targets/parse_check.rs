//! Fuzzes the front end: any bytes, decoded as the CLI would, must parse and check without a panic,
//! and every diagnostic must point inside the source.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else { return };
    let (_, diagnostics) = ssl_lang::compile(source);
    for d in &diagnostics {
        let span = d.span();
        assert!(span.start <= span.end && span.end <= source.len());
    }
});
