//! Kernel records as the ring buffer hands them over: any bytes decode or fail cleanly.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = watcher::pipeline::intake::decode::decode(data);
    let _ = watcher::pipeline::intake::decode::alert(data);
});
