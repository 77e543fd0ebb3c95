//! The wall clock stepped for a test (root: CAP_SYS_TIME), and put back.

pub fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(clock, &mut t) };
    t.tv_sec as i128 * 1_000_000_000 + t.tv_nsec as i128
}

fn set_realtime(ns: i128) {
    let t = libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: clock_settime reads the timespec it is given (root: CAP_SYS_TIME).
    let r = unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &t) };
    assert_eq!(r, 0, "clock_settime: {}", std::io::Error::last_os_error());
}

/// The wall clock stepped by `by_s` seconds; put back (to the nanosecond the monotonic clock
/// says) when dropped, a failing test included. One step at a time in a test binary: a step
/// taken during another would be put back to the other's stepped clock, and the host's clock
/// left two hours off.
pub struct ClockStep {
    offset: i128,
    _one: std::sync::MutexGuard<'static, ()>,
}

static STEPPING: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl ClockStep {
    pub fn new(by_s: i64) -> ClockStep {
        let one = STEPPING.lock().unwrap_or_else(|e| e.into_inner());
        let offset = clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC);
        set_realtime(clock_ns(libc::CLOCK_REALTIME) + by_s as i128 * 1_000_000_000);
        ClockStep { offset, _one: one }
    }
}

impl Drop for ClockStep {
    fn drop(&mut self) {
        set_realtime(clock_ns(libc::CLOCK_MONOTONIC) + self.offset);
    }
}
