//! `cgroup_skb/ingress` and `egress`, attached to the directory of the daemon's session cgroups,
//! so they run for packets of watched sessions' sockets only: a UDP packet from port 53 (a DNS
//! response) or to it (a query) is copied, up to `DNS_MAX` bytes of the message, with the
//! resolver's address and the socket's port, for user space to parse: a response teaches a
//! name only when it answers a query the session sent. The packet always passes: these
//! programs only look.
use aya_ebpf::{
    helpers::generated::{bpf_ktime_get_boot_ns, bpf_skb_cgroup_id, bpf_skb_load_bytes},
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use watcher_common::{DnsEvent, EventKind, DNS_MAX, EVENT_FLAG_TRUNCATED};

const _: () = assert!(DNS_MAX.is_power_of_two());

use crate::shared::{count_drop, EVENTS};

const PASS: i32 = 1;
const UDP: u8 = 17;
const DNS_PORT: u16 = 53;

#[cgroup_skb]
pub fn dns_ingress(ctx: SkBuffContext) -> i32 {
    let _ = try_dns(&ctx, false);
    PASS
}

/// The queries the sessions send (UDP to port 53): an answer counts only for one of them.
#[cgroup_skb]
pub fn dns_egress(ctx: SkBuffContext) -> i32 {
    let _ = try_dns(&ctx, true);
    PASS
}

fn try_dns(ctx: &SkBuffContext, query: bool) -> Result<(), i64> {
    // The packet starts at the network header.
    let first: u8 = ctx.load(0)?;
    let udp = match first >> 4 {
        4 => {
            if ctx.load::<u8>(9)? != UDP {
                return Ok(());
            }
            ((first & 0x0f) as usize) * 4
        }
        // No extension headers: a DNS answer does not carry any.
        6 => {
            if ctx.load::<u8>(6)? != UDP {
                return Ok(());
            }
            40
        }
        _ => return Ok(()),
    };
    let src_port = u16::from_be(ctx.load::<u16>(udp)?);
    let dst_port = u16::from_be(ctx.load::<u16>(udp + 2)?);
    let (dns_port, local_port) = match query {
        true => (dst_port, src_port),
        false => (src_port, dst_port),
    };
    if dns_port != DNS_PORT {
        return Ok(());
    }
    // The resolver's address: a query's destination, an answer's source.
    let v6 = first >> 4 == 6;
    let mut peer = [0u8; 16];
    match (v6, query) {
        (false, true) => peer[..4].copy_from_slice(&ctx.load::<[u8; 4]>(16)?),
        (false, false) => peer[..4].copy_from_slice(&ctx.load::<[u8; 4]>(12)?),
        (true, true) => peer = ctx.load::<[u8; 16]>(24)?,
        (true, false) => peer = ctx.load::<[u8; 16]>(8)?,
    }
    let start = udp + 8;
    let wire = (ctx.len() as usize).saturating_sub(start);
    if wire == 0 {
        return Ok(());
    }
    let Some(mut entry) = EVENTS.reserve::<DnsEvent>(0) else {
        count_drop(EventKind::Dns);
        return Ok(());
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is a live reservation of size_of::<DnsEvent>().
    unsafe {
        let hdr = &raw mut (*ev).hdr;
        (*hdr).kind = EventKind::Dns as u32;
        (*hdr).flags = if wire > DNS_MAX {
            EVENT_FLAG_TRUNCATED
        } else {
            0
        };
        (*hdr).ts_ns = bpf_ktime_get_boot_ns();
        (*hdr).session_id = 0;
        (*hdr).cgroup_id = bpf_skb_cgroup_id(ctx.skb.skb);
        (*hdr).pid = 0;
        (*hdr).tgid = 0;
        (*hdr).ppid = 0;
        (*hdr).uid = 0;
        (*hdr).comm = [0; 16];
        (*ev).wire_len = wire as u32;
        (*ev).peer = peer;
        (*ev).local_port = local_port;
        (*ev).v6 = v6 as u8;
        (*ev).query = query as u8;
        (*ev)._pad = 0;
        // 1..=DNS_MAX in a form the verifier can see (a power of two: `wire` is not 0 here).
        let n = ((wire.min(DNS_MAX) - 1) & (DNS_MAX - 1)) + 1;
        let r = bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            start as u32,
            (*ev).data.as_mut_ptr() as *mut _,
            n as u32,
        );
        if r != 0 {
            entry.discard(0);
            return Ok(());
        }
        (*ev).len = n as u32;
    }
    entry.submit(0);
    Ok(())
}
