//! The config parser and validation: arbitrary TOML never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mailspool::config::{Config, RelayUrl};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(mut c) = Config::from_toml(text) {
        let _ = c.validate();
        for r in c.relay_set() {
            let _ = r.effective_tls();
        }
    }
    let _ = RelayUrl::parse(text);
});
