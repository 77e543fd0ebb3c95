//! `syscalls:sys_enter_*` and `sys_exit_*` of setuid, setgid, setreuid, setregid, setresuid,
//! setresgid, setfsuid, setfsgid and capset: the ids and capabilities before (kept at entry,
//! by thread, in `SETID_OLD`) and after (at exit), with the ids asked for and the result. The
//! only hooks with an entry half: after `commit_creds` the old credentials are gone.
use aya_ebpf::{
    macros::{map, tracepoint},
    maps::LruHashMap,
    programs::TracePointContext,
};
use watcher_common::{Creds, EventKind, SetidEvent, GATE_SETID};

use crate::record::reserve;
use crate::{
    gate,
    shared::{ready, watch_of, watched_call, Task},
};

/// Credentials at entry, by thread id; LRU so that a thread killed inside the call cannot leak.
#[map]
static SETID_OLD: LruHashMap<u32, Creds> = LruHashMap::with_max_entries(1024, 0);

macro_rules! setid_hooks {
    ($($enter:ident, $exit:ident, $call:expr;)*) => {$(
        #[tracepoint]
        pub fn $enter(_ctx: TracePointContext) -> u32 {
            try_enter();
            0
        }

        #[tracepoint]
        pub fn $exit(_ctx: TracePointContext) -> u32 {
            try_exit($call);
            0
        }
    )*};
}

setid_hooks! {
    sys_enter_setuid, sys_exit_setuid, 0;
    sys_enter_setgid, sys_exit_setgid, 1;
    sys_enter_setreuid, sys_exit_setreuid, 2;
    sys_enter_setregid, sys_exit_setregid, 3;
    sys_enter_setresuid, sys_exit_setresuid, 4;
    sys_enter_setresgid, sys_exit_setresgid, 5;
    sys_enter_setfsuid, sys_exit_setfsuid, 6;
    sys_enter_setfsgid, sys_exit_setfsgid, 7;
    sys_enter_capset, sys_exit_capset, 8;
}

fn try_enter() {
    let task = Task::current();
    if watch_of(task.tgid()).is_none() || !ready() {
        return;
    }
    let _ = SETID_OLD.insert(&task.pid(), &task.creds(), 0);
}

fn try_exit(call: u32) {
    let Some((task, watch, sc)) = watched_call() else {
        return;
    };
    let tid = task.pid();
    // SAFETY: the value is copied out at once.
    let old = unsafe { SETID_OLD.get(&tid).copied() };
    if old.is_some() {
        let _ = SETID_OLD.remove(&tid);
    }
    let a = sc.args;
    let asked = match call {
        0 | 1 | 6 | 7 => [a[0] as u32, u32::MAX, u32::MAX],
        2 | 3 => [a[0] as u32, a[1] as u32, u32::MAX],
        4 | 5 => [a[0] as u32, a[1] as u32, a[2] as u32],
        _ => [0; 3],
    };
    // setfsuid and setfsgid return the old id; the others 0 on success.
    let ok = sc.ret == 0 || call == 6 || call == 7;
    let gated = if ok {
        gate::stop_rare(task, watch.session_id, GATE_SETID, EventKind::Setid)
    } else {
        0
    };
    let Some(mut entry) =
        reserve::<SetidEvent>(task, EventKind::Setid, watch.session_id, watch.ppid)
    else {
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is a live reservation of size_of::<SetidEvent>().
    unsafe {
        (*ev).hdr.flags = gated;
        (*ev).result = sc.ret;
        (*ev).call = call;
        (*ev)._pad = 0;
        (*ev).args = asked;
        (*ev)._pad2 = 0;
        (*ev).old = old.unwrap_or_default();
        (*ev).new = task.creds();
        (*ev).ok = old.is_some() as u32;
        (*ev)._pad3 = 0;
    }
    entry.submit(0);
}
