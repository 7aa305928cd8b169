//! `app.json` text (docs/apps.md, "The manifest"): the master's manifest parser accepts it with
//! a non-empty argv or refuses it with a message, never panics; `install_argv` of an accepted
//! manifest is total.
//!
//! The parser comes from the `tako-protocol` crate the server uses; `manifest::parse` is the
//! text half of reading a release's manifest.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

use tako_protocol::manifest;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A directory that does not exist: the bun wrapper lookup finds nothing.
    let release = Path::new("/nonexistent/tako-fuzz/release");
    match manifest::parse(text, release, &|| release.join(manifest::WRAPPER)) {
        Ok(m) => {
            assert!(!m.argv.is_empty(), "an accepted manifest has a command");
            assert!(!m.runtime.trim().is_empty());
            let _ = manifest::install_argv(&m, false);
            let _ = manifest::install_argv(&m, true);
        }
        Err(msg) => assert!(!msg.is_empty()),
    }
});
