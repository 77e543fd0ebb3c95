//! A task scope (`watcher launch --scope FILE` and the flags): compiled or refused with an error
//! naming the field, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use watcher::{model::scope::Scope, pipeline::scope::ScopeCheck};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(s) = serde_yaml_ng::from_str::<Scope>(text) {
        let _ = ScopeCheck::compile(s);
    }
});
