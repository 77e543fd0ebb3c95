//! User space's side of `WATCH_FILTER`, the per-slot counters in front of the watched-process
//! map (see `watcher-ebpf/src/shared.rs`): mapped into the daemon and raised with the same
//! atomic add the programs use, so neither side can lose the other's update.
use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{bail, Context as _};
use aya::maps::{Array, IterableMap as _, Map, MapData};
use watcher_common::{watch_slot, WATCH_FILTER_SLOTS};

pub struct WatchFilter {
    /// Keeps the map (and so the mapping's object) alive.
    _map: Array<MapData, u64>,
    slots: NonNull<AtomicU64>,
}

// SAFETY: the mapping is only ever touched through atomics.
unsafe impl Send for WatchFilter {}
unsafe impl Sync for WatchFilter {}

const LEN: usize = WATCH_FILTER_SLOTS as usize * size_of::<u64>();

impl WatchFilter {
    pub fn new(map: Map) -> anyhow::Result<WatchFilter> {
        let array: Array<MapData, u64> =
            Array::try_from(map).context("WATCH_FILTER is not an array map")?;
        let fd = array.map().fd().as_fd().as_raw_fd();
        // SAFETY: a shared mapping of the whole map, which the kernel created mappable.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            bail!(
                "mapping the WATCH_FILTER map: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(WatchFilter {
            _map: array,
            slots: NonNull::new(p.cast()).context("mmap returned null")?,
        })
    }

    /// Counts one more watched process in `tgid`'s slot; before the process goes into the map.
    pub fn add(&self, tgid: u32) {
        self.slot(tgid).fetch_add(1, Ordering::SeqCst);
    }

    /// Takes back an `add` whose map insert failed.
    pub fn undo_add(&self, tgid: u32) {
        self.slot(tgid).fetch_sub(1, Ordering::SeqCst);
    }

    fn slot(&self, tgid: u32) -> &AtomicU64 {
        // SAFETY: `watch_slot` is below WATCH_FILTER_SLOTS, the mapping lives as long as self.
        unsafe { self.slots.add(watch_slot(tgid) as usize).as_ref() }
    }
}

impl Drop for WatchFilter {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, not used after this.
        unsafe { libc::munmap(self.slots.as_ptr().cast(), LEN) };
    }
}
