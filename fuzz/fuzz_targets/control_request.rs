//! Control socket request lines from a local client: parsed or refused with an error.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = watcher::model::protocol::parse_request(data) {
        // What parses serialises again (the CLI's side of the protocol).
        serde_json::to_string(&req).expect("a parsed request serialises");
    }
});
