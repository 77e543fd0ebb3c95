//! Kernel programs of the watcher. One file per hook under `probes/`; this file holds the maps
//! and the helpers every probe shares.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// `AtomicU64::fetch_add` does not exist on the BPF target (no compare-and-swap loop to build
// it from); the intrinsic is the one atomic add BPF has always had.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod gate;
#[cfg(target_arch = "bpf")]
mod probes;
#[cfg(target_arch = "bpf")]
mod record;
#[cfg(target_arch = "bpf")]
mod shared;

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects programs that could reach a panic; this is never called.
    unsafe { core::hint::unreachable_unchecked() }
}
