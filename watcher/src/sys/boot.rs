//! This boot's clock and identity: what a wall-clock step does not move, and what tells a
//! restarted daemon whether a time on that clock is still comparable (the same boot).
use std::sync::OnceLock;

/// CLOCK_BOOTTIME in nanoseconds: the clock of the kernel's event timestamps.
pub fn boot_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The kernel's id of this boot (`/proc/sys/kernel/random/boot_id`); empty when it cannot be
/// read, which matches no stored id (so no time on the boot clock is trusted across it).
pub fn boot_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    })
}
