use std::env;

// The eBPF object is linked by `bpf-linker`, which cargo does not know about: rebuild when it
// changes. A missing linker is reported by aya-build with its own message.
fn main() {
    if let Some(path) = env::var_os("PATH") {
        for dir in env::split_paths(&path) {
            let linker = dir.join("bpf-linker");
            if linker.exists() {
                println!("cargo:rerun-if-changed={}", linker.display());
                break;
            }
        }
    }
}
