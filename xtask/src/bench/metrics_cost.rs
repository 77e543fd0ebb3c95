//! What `/metrics` adds to the pipeline's cost per event: the daemon's CPU per event of one
//! watched open storm with `[metrics] listen` off, and on with a scrape every second (what a
//! Prometheus does at a 1 s interval), a daemon of each per round, in ABBA order.
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    sync::mpsc,
    time::Duration,
};

use anyhow::{anyhow, bail};

use super::{run_storm, stats, ticks_per_sec, totals, Daemon};

/// Opens per storm: a few seconds watched, so each storm sees several scrapes and the daemon
/// uses hundreds of clock ticks (one tick is the resolution of its CPU time).
const OPS: u64 = 2_000_000;
const SCRAPE_EVERY: Duration = Duration::from_secs(1);
/// Back-to-back scrapes of an idle daemon after its storm: what one scrape costs the daemon,
/// measured directly (the storm's own noise is far larger than a scrape a second).
const SCRAPES: u32 = 2000;

/// One storm under a daemon.
struct Storm {
    /// Daemon CPU ns per delivered event.
    ns: f64,
    events: u64,
    drops: u64,
    /// Scrapes during the storm, and the daemon's CPU ns per scrape when idle after it.
    scrapes: u64,
    scrape_ns: f64,
}

fn one(bin: &Path, dir: &Path, serve: bool) -> anyhow::Result<Storm> {
    let listen = if serve {
        // A free loopback port, given back to the daemon.
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        format!("127.0.0.1:{port}")
    } else {
        String::new()
    };
    let d = Daemon::start_serving(bin, dir, None, &listen)?;
    let (stop, stopped) = mpsc::channel::<()>();
    let scraper = serve.then(|| {
        let addr = listen.clone();
        std::thread::spawn(move || -> anyhow::Result<u64> {
            let mut n = 0;
            loop {
                scrape(&addr)?;
                n += 1;
                match stopped.recv_timeout(SCRAPE_EVERY) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return Ok(n),
                }
            }
        })
    });
    let (ev0, dr0) = totals(&d.status(bin)?);
    let cpu0 = d.cpu_ticks();
    let launch = d.launch_prefix(bin.as_os_str());
    run_storm(&launch, "open", OPS)?;
    let (ev1, dr1) = totals(&d.settled(bin)?);
    let cpu = d.cpu_ticks() - cpu0;
    drop(stop);
    let scrapes = match scraper {
        Some(t) => t.join().map_err(|_| anyhow!("the scraper panicked"))??,
        None => 0,
    };
    let events = ev1 - ev0;
    if events == 0 {
        bail!("the watched open storm delivered no events");
    }
    let tick = 1e9 / ticks_per_sec();
    let mut scrape_ns = 0.0;
    if serve {
        let cpu0 = d.cpu_ticks();
        for _ in 0..SCRAPES {
            scrape(&listen)?;
        }
        scrape_ns = (d.cpu_ticks() - cpu0) as f64 * tick / f64::from(SCRAPES);
    }
    Ok(Storm {
        ns: cpu as f64 * tick / events as f64,
        events,
        drops: dr1 - dr0,
        scrapes,
        scrape_ns,
    })
}

/// GET /metrics; an error unless it answers 200 with a body.
fn scrape(addr: &str) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    if !text.starts_with("HTTP/1.1 200") || !text.contains("watcher_events_total") {
        bail!(
            "scraping {addr}: {}",
            text.lines().next().unwrap_or("no answer")
        );
    }
    Ok(())
}

pub fn run(bin: &Path, dir: &Path, rounds: usize) -> anyhow::Result<()> {
    let rounds = rounds.max(2);
    let mut off = Vec::new();
    let mut on = Vec::new();
    let mut ratios = Vec::new();
    let mut per_scrape = Vec::new();
    let mut shares = Vec::new();
    let (mut events, mut drops, mut scrapes) = (0u64, 0u64, 0u64);
    for round in 0..rounds {
        eprintln!("bench: metrics cost, round {}/{rounds}", round + 1);
        // ABBA: which variant goes first alternates, so a drift over the run hits both alike.
        let (a, b) = if round % 2 == 0 {
            let a = one(bin, dir, false)?;
            (a, one(bin, dir, true)?)
        } else {
            let b = one(bin, dir, true)?;
            (one(bin, dir, false)?, b)
        };
        // The scrapes' share of the daemon's work in the storm they ran beside.
        shares.push(b.scrapes as f64 * b.scrape_ns / (b.events as f64 * a.ns));
        off.push(a.ns);
        on.push(b.ns);
        ratios.push(b.ns / a.ns);
        per_scrape.push(b.scrape_ns);
        events += a.events + b.events;
        drops += a.drops + b.drops;
        scrapes += b.scrapes;
    }
    let (off_m, off_lo, off_hi) = stats(off);
    let (on_m, on_lo, on_hi) = stats(on);
    let (r_m, r_lo, r_hi) = stats(ratios);
    let (p_m, p_lo, p_hi) = stats(per_scrape);
    let (s_m, s_lo, s_hi) = stats(shares);
    println!(
        "\nDaemon CPU per event, watched open storm of {OPS} opens ({rounds} rounds, ABBA; {events} events, {drops} drops, {scrapes} scrapes):\n"
    );
    println!("| /metrics | ns/event median | min | max |");
    println!("| --- | --- | --- | --- |");
    println!("| off | {off_m:.0} | {off_lo:.0} | {off_hi:.0} |");
    println!("| on, scraped every 1 s | {on_m:.0} | {on_lo:.0} | {on_hi:.0} |");
    println!("\non / off per round: {r_m:.3}x median (min {r_lo:.3}x, max {r_hi:.3}x)");
    println!(
        "one scrape of the idle daemon after its storm ({SCRAPES} back to back): {:.0} µs of daemon CPU median (min {:.0}, max {:.0})",
        p_m / 1e3,
        p_lo / 1e3,
        p_hi / 1e3
    );
    println!(
        "scrapes during a storm x CPU per scrape / the storm's daemon CPU with /metrics off: {:.4}% median (min {:.4}%, max {:.4}%)",
        s_m * 100.0,
        s_lo * 100.0,
        s_hi * 100.0
    );
    Ok(())
}
