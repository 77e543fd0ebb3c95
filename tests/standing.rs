//! The watcher stands (issue 31): what the daemon keeps is its own, and no watched process
//! stops it. Root end-to-end tests on the real kernel.
mod common;
use std::{os::unix::fs::PermissionsExt as _, path::Path};

use common::{Daemon, TempDir};

/// Every file of the daemon's that exists among `names` in `dir`, with its mode.
fn modes(dir: &Path, names: &[&str]) -> Vec<(String, u32)> {
    names
        .iter()
        .filter_map(|n| {
            let md = std::fs::symlink_metadata(dir.join(n)).ok()?;
            Some((n.to_string(), md.permissions().mode() & 0o7777))
        })
        .collect()
}

const STATE: [&str; 7] = [
    "watcher.db",
    "watcher.db-wal",
    "watcher.db-shm",
    "audit.db",
    "audit.db-wal",
    "audit.db-shm",
    "audit.key",
];

#[test]
fn the_stores_their_wal_and_shm_and_the_token_are_never_readable_by_others() {
    let tmp = TempDir::new("standing-modes");
    let token = tmp.0.join("api.token");
    let export = tmp.0.join("export.jsonl");
    let port = common::free_port();
    // A host whose umask is 0 would have every file made with the default mode world-readable.
    let mut d = Daemon::start_with_umask(
        &format!(
            "[api]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"\n[audit]\nexport = \"{}\"\n",
            token.display(),
            export.display()
        ),
        0,
    );
    let (_, code) = d.launch("true");
    assert_eq!(code, 0);
    // The export is written once a second: awaited, with a deadline.
    let start = std::time::Instant::now();
    while !export.exists() {
        assert!(
            start.elapsed() < common::DEADLINE,
            "no export within {:?}",
            common::DEADLINE
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let check = |d: &Daemon, when: &str| {
        let mut found = modes(&d.dir.0, &STATE);
        found.extend(modes(&tmp.0, &["api.token", "export.jsonl"]));
        let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
        for must in [
            "watcher.db",
            "watcher.db-wal",
            "watcher.db-shm",
            "audit.db",
            "audit.db-wal",
            "audit.db-shm",
            "audit.key",
            "api.token",
        ] {
            assert!(
                names.contains(&must),
                "{when}: {must} missing among {names:?}"
            );
        }
        for (name, mode) in &found {
            assert_eq!(
                mode & 0o007,
                0,
                "{when}: {name} has mode {mode:o}: others may read it"
            );
        }
    };
    check(&d, "first start, umask 0");
    // Files an older version or a user left readable are closed at the next start.
    d.kill();
    for (dir, n) in STATE
        .iter()
        .map(|n| (&d.dir.0, *n))
        .chain([(&tmp.0, "api.token"), (&tmp.0, "export.jsonl")])
    {
        let p = dir.join(n);
        if p.exists() && n != "audit.key" {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    d.restart();
    check(&d, "restart over files left 0644");
}
