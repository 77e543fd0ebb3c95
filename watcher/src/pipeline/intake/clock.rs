//! The wall-clock time of a kernel timestamp (boot time).
use super::*;

/// Converts kernel CLOCK_BOOTTIME stamps to wall-clock time.
pub(super) struct Clock {
    offset_ns: i128,
    /// The boot-time stamp of the event at the last measurement.
    refreshed_boot_ns: u64,
}

impl Clock {
    pub(super) fn new() -> Clock {
        Clock {
            offset_ns: Self::measure(),
            refreshed_boot_ns: 0,
        }
    }

    pub(super) fn measure() -> i128 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        let boot = ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128;
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        wall - boot
    }

    pub(super) fn wall(&mut self, boot_ns: u64) -> SystemTime {
        // Follow clock steps (NTP) without a syscall per event: the events' own kernel time
        // says when the last measurement is old.
        if boot_ns.abs_diff(self.refreshed_boot_ns) > CLOCK_REFRESH_NS {
            self.offset_ns = Self::measure();
            self.refreshed_boot_ns = boot_ns;
        }
        let ns = (boot_ns as i128 + self.offset_ns).max(0) as u128;
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    }
}
