//! Reading the kernel's rings: the record ring, drained in batches on its own thread, and the
//! alert ring, which wakes the freezer at once.
use super::*;

/// Starts the reader and the alert thread; they run until the process ends.
pub fn spawn(
    (events, alerts): (RingBuf<MapData>, RingBuf<MapData>),
    shared: Arc<Core>,
    seeds: std::sync::mpsc::Receiver<Seed>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Handle::current();
    let boost = Arc::new(Boost::default());
    let reader = Reader {
        events,
        queue: std::collections::VecDeque::with_capacity(QUEUE),
        batch_wait: shared.config.daemon.batch_wait,
        intake: Intake::new(shared.clone(), seeds),
        shared: shared.clone(),
        boost: boost.clone(),
    };
    let intake = std::thread::Builder::new()
        .name("intake".into())
        .spawn(move || {
            // Holds and tamper actions start blocking work on the runtime.
            let _rt = runtime.enter();
            // SAFETY: gettid has no preconditions.
            reader
                .boost
                .tid
                .store(unsafe { libc::gettid() }, Ordering::Release);
            reader.run()
        })
        .map_err(|e| anyhow::anyhow!("starting the intake thread: {e}"))?;
    let alerts = Alerts {
        ring: alerts,
        shared,
        intake: intake.thread().clone(),
        boost,
    };
    std::thread::Builder::new()
        .name("intake-alerts".into())
        .spawn(move || alerts.run())
        .map_err(|e| anyhow::anyhow!("starting the alert thread: {e}"))?;
    Ok(())
}

/// Drains the record ring and runs each record through the pipeline, on a thread of its own.
/// While records keep coming it sleeps `batch_wait` between drains; when a drain finds nothing
/// it blocks until the kernel wakes it. One thread for both: handing records to another
/// thread cost a second wake-up per batch, more than the pipeline's own work at agent rates.
/// Everything slow (hold records, kill-switch) is started on the runtime, not done here.
struct Reader {
    events: RingBuf<MapData>,
    queue: std::collections::VecDeque<Record>,
    batch_wait: Duration,
    intake: Intake,
    shared: Arc<Core>,
    boost: Arc<Boost>,
}

impl Reader {
    fn run(mut self) {
        loop {
            if let Err(e) = wait_readable(&self.events) {
                tracing::error!("polling the ring buffer failed, intake stopped: {e}");
                return;
            }
            crate::sys::fault::pause(crate::sys::fault::PAUSE_INTAKE);
            // A gated event wakes the thread early (the alert thread unparks it).
            while self.drain() > 0 && !self.batch_wait.is_zero() {
                self.boost.lower();
                std::thread::park_timeout(self.batch_wait);
            }
            self.boost.lower();
        }
    }

    /// Processes every waiting record; returns how many.
    fn drain(&mut self) -> u32 {
        let mut n = 0u32;
        loop {
            self.fill();
            if self.queue.is_empty() {
                return n;
            }
            for _ in 0..SLICE {
                let Some(rec) = self.queue.pop_front() else {
                    break;
                };
                self.intake.process(rec);
                n += 1;
            }
        }
    }

    /// Moves records from the kernel's ring into the queue until the ring is empty or the
    /// queue full.
    fn fill(&mut self) {
        while self.queue.len() < QUEUE {
            let Some(item) = self.events.next() else {
                return;
            };
            let rec = match decode(&item) {
                Ok(r) => r,
                Err(e) => {
                    malformed(&self.shared, "record", &e);
                    continue;
                }
            };
            drop(item);
            let hdr = rec.header();
            if hdr.flags & EVENT_FLAG_STOPPED != 0 {
                // Normally frozen from the alert already (a second write is harmless); this
                // covers an alert the kernel could not write.
                self.shared.cgroups.freeze_id(hdr.cgroup_id, hdr.ts_ns);
            }
            self.queue.push_back(rec);
        }
    }
}

/// Freezes the session of a hold the kernel decided (the trigger is stopped already) as soon
/// as the kernel says so, on a thread that does nothing else and runs at real-time priority
/// when allowed: neither a busy pipeline nor a busy CPU delays it. It wakes only for holds.
struct Alerts {
    ring: RingBuf<MapData>,
    shared: Arc<Core>,
    /// Woken for a gated event, which waits stopped until the intake has decided it.
    intake: std::thread::Thread,
    boost: Arc<Boost>,
}

impl Alerts {
    fn run(mut self) {
        realtime_priority();
        loop {
            if let Err(e) = wait_readable(&self.ring) {
                tracing::error!("polling the alert ring failed, kernel holds freeze late: {e}");
                return;
            }
            while let Some(item) = self.ring.next() {
                match decode::alert(&item) {
                    Ok(a) if a.flags & EVENT_FLAG_STOPPED != 0 => {
                        self.shared.cgroups.freeze_id(a.cgroup_id, a.ts_ns);
                    }
                    Ok(a) if a.flags & EVENT_FLAG_GATED != 0 => {
                        self.boost.raise();
                        self.intake.unpark();
                    }
                    Ok(_) => {}
                    Err(e) => malformed(&self.shared, "alert", &e),
                }
            }
        }
    }
}

/// SCHED_FIFO at the lowest real-time priority for the calling thread (and the threads it
/// starts). Only for threads that sleep until the kernel has something urgent.
fn realtime_priority() {
    if let Err(e) = set_realtime(0, true) {
        tracing::debug!("no real-time priority for the alert thread: {e}");
    }
}

/// Moves thread `tid` (0: the calling thread) to SCHED_FIFO at the lowest real-time priority,
/// or back to the normal scheduler.
fn set_realtime(tid: i32, on: bool) -> std::io::Result<()> {
    let (policy, prio) = if on {
        (libc::SCHED_FIFO, 1)
    } else {
        (libc::SCHED_OTHER, 0)
    };
    let param = libc::sched_param {
        sched_priority: prio,
    };
    // SAFETY: plain syscall on one of this process's threads.
    if unsafe { libc::sched_setscheduler(tid, policy, &param) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The intake thread's id and whether a gated event has it at real-time priority: while a
/// process waits stopped at the gate, the intake runs ahead of the busy CPU's other work,
/// and goes back to the normal scheduler once the ring is drained.
#[derive(Default)]
struct Boost {
    tid: std::sync::atomic::AtomicI32,
    on: std::sync::atomic::AtomicBool,
}

impl Boost {
    /// From the alert thread.
    fn raise(&self) {
        let tid = self.tid.load(Ordering::Acquire);
        if tid != 0 && !self.on.swap(true, Ordering::AcqRel) && set_realtime(tid, true).is_err() {
            self.on.store(false, Ordering::Release);
        }
    }

    /// From the intake thread, when it has nothing left to do.
    fn lower(&self) {
        if self.on.swap(false, Ordering::AcqRel) {
            let _ = set_realtime(0, false);
        }
    }
}

/// Counts and logs a ring entry that could not be decoded.
fn malformed(shared: &Core, what: &str, e: &decode::DecodeError) {
    shared.counters.malformed.fetch_add(1, Ordering::Relaxed);
    tracing::warn!("malformed {what}: {e}");
}

/// Blocks until `ring` has data.
fn wait_readable(ring: &RingBuf<MapData>) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut fd = libc::pollfd {
        fd: ring.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    if unsafe { libc::poll(&mut fd, 1, -1) } < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}
