//! How full a BPF ring buffer is, read from the kernel's own positions.
//!
//! aya's `RingBuf` keeps its positions private, so this maps the ring's first two pages a second
//! time, read-only: the consumer position is the first word of page 0, the producer position the
//! first word of page 1 (`struct bpf_ringbuf` in kernel/bpf/ringbuf.c). The kernel allows any
//! read-only mapping of a ring (only the consumer page may be mapped writable), and a mapping
//! keeps the map alive on its own. Reading two words costs nothing next to a scrape.
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

/// A read-only view of one ring's consumer and producer positions.
pub struct RingFill {
    base: NonNull<libc::c_void>,
    page: usize,
    /// The ring's data size in bytes (its `max_entries`).
    size: u64,
}

// SAFETY: the mapping is read-only shared memory the kernel writes; it is only read through
// atomic loads, from any thread.
unsafe impl Send for RingFill {}
unsafe impl Sync for RingFill {}

impl RingFill {
    /// Maps the positions of the ring `fd`, whose data area is `size` bytes.
    pub fn new(fd: BorrowedFd<'_>, size: u32) -> std::io::Result<RingFill> {
        if size == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a ring buffer of 0 bytes",
            ));
        }
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_| std::io::Error::last_os_error())?;
        // SAFETY: a fresh read-only shared mapping of a ring's first two pages; the kernel
        // checks the fd and the range.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * page,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let base = NonNull::new(ptr).ok_or_else(std::io::Error::last_os_error)?;
        Ok(RingFill {
            base,
            page,
            size: u64::from(size),
        })
    }

    /// Bytes written by the kernel and not yet consumed, reserved records included.
    pub fn used(&self) -> u64 {
        // SAFETY: both words lie inside the mapping, are 8-byte aligned (page starts) and are
        // only ever written by the kernel with release stores.
        let (cons, prod) = unsafe {
            let cons = &*self.base.as_ptr().cast::<AtomicU64>();
            let prod = &*self.base.as_ptr().byte_add(self.page).cast::<AtomicU64>();
            (cons.load(Ordering::Acquire), prod.load(Ordering::Acquire))
        };
        prod.saturating_sub(cons).min(self.size)
    }

    /// `used` over the ring's size, 0 to 1.
    pub fn ratio(&self) -> f64 {
        self.used() as f64 / self.size as f64
    }
}

impl Drop for RingFill {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr(), 2 * self.page) };
    }
}
