//! Socket addresses copied from a process's memory: any bytes give some address, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = watcher::pipeline::intake::decode::sockaddr(data);
});
