//! Users and groups, through NSS (files, LDAP, sssd: whatever the host's nsswitch says), and who
//! may decide anything.
use anyhow::anyhow;

use crate::config::Config;

/// The group's id, through NSS (files, LDAP, sssd: whatever the host's nsswitch says).
pub fn group_id(name: &str) -> anyhow::Result<u32> {
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(anyhow!("approver_group {name:?}: no such group")),
        Err(e) => Err(anyhow!("approver_group {name:?}: looking it up: {e}")),
    }
}

/// Root, or a member of the approver group (checked on the peer's credentials, not on what
/// it claims).
pub fn authorized(cred: &tokio::net::unix::UCred, cfg: &Config) -> bool {
    authorized_ids(cred.uid(), cred.gid(), cred.pid().map(|p| p as u32), cfg)
}

/// `authorized` for a process by its ids (a message's sender, `sys::peer`).
pub fn authorized_ids(uid: u32, primary: u32, pid: Option<u32>, cfg: &Config) -> bool {
    if uid == 0 {
        return true;
    }
    let Some(group) = &cfg.daemon.approver_group else {
        return false;
    };
    let Ok(gid) = group_id(group) else {
        return false;
    };
    if primary == gid {
        return true;
    }
    // Supplementary groups of the peer process.
    pid.and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Groups:"))
                .map(|l| l[7..].split_whitespace().any(|g| g.parse() == Ok(gid)))
        })
        .unwrap_or(false)
}

/// The peer's user name (for the record of who decided), through NSS, or `uid N`.
pub fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => u.name,
        _ => format!("uid {uid}"),
    }
}
