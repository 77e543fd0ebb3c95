//! Rule files from an operator: any text compiles, or fails with an error, and a policy that
//! compiles also yields its kernel part and its gate, and runs its examples.
#![no_main]
use libfuzzer_sys::fuzz_target;
use watcher::rules::{self, Source};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let sources = [Source {
        name: "fuzz.yaml".into(),
        text: text.into(),
    }];
    let homes = ["/root".to_string(), "/home/*".to_string()];
    if let Ok(policy) = rules::compile::compile(&sources, &homes) {
        let kernel = rules::kernel::KernelPolicy::of(&policy, true);
        let _ = rules::gate::GatePlan::of(&policy, &kernel, true);
        let _ = rules::examples::run(&policy, &sources);
    }
});
