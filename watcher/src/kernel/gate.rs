//! The gate's maps (see `watcher_ebpf::gate`): the entries the policy compiles to, the kinds
//! gated per session, and the processes the gate stopped that wait for an answer.
use anyhow::{anyhow, Context as _};
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData};
use watcher_common::{Gate, Gated, InodeKey};

use super::Kernel;

/// A handle on the maps the verdict path writes, for a thread that must not wait for the
/// kernel lock (the intake answers every gated event through it).
pub struct GateHandle {
    gated: BpfHashMap<MapData, u32, Gated>,
    session: BpfHashMap<MapData, u64, u32>,
    all: Array<MapData, u32>,
    lost: BpfHashMap<MapData, u64, u64>,
}

impl Kernel {
    /// Makes `GATE_INODE` hold exactly `entries`. The count the programs test goes up before
    /// entries are added and down after stale ones are removed.
    pub fn set_inodes(&mut self, entries: &[(InodeKey, Gate)]) -> anyhow::Result<()> {
        let map: BpfHashMap<_, InodeKey, Gate> = BpfHashMap::try_from(
            self.ebpf
                .map_mut("GATE_INODE")
                .ok_or_else(|| anyhow!("no GATE_INODE map"))?,
        )?;
        let old: Vec<InodeKey> = map.keys().filter_map(Result::ok).collect();
        let new: std::collections::HashSet<InodeKey> = entries.iter().map(|(k, _)| *k).collect();
        let count = |n: usize| n.min(u32::MAX as usize) as u32;
        let both = old.iter().filter(|k| !new.contains(k)).count() + new.len();
        let mut all: Array<_, u32> = Array::try_from(
            self.ebpf
                .map_mut("GATE_ALL")
                .ok_or_else(|| anyhow!("no GATE_ALL map"))?,
        )?;
        all.set(3, count(both), 0).context("setting GATE_ALL")?;
        let mut map: BpfHashMap<_, InodeKey, Gate> = BpfHashMap::try_from(
            self.ebpf
                .map_mut("GATE_INODE")
                .ok_or_else(|| anyhow!("no GATE_INODE map"))?,
        )?;
        for (k, v) in entries {
            map.insert(k, v, 0).context("updating GATE_INODE")?;
        }
        for k in old.iter().filter(|k| !new.contains(k)) {
            let _ = map.remove(k);
        }
        let mut all: Array<_, u32> = Array::try_from(
            self.ebpf
                .map_mut("GATE_ALL")
                .ok_or_else(|| anyhow!("no GATE_ALL map"))?,
        )?;
        all.set(3, count(new.len()), 0).context("setting GATE_ALL")
    }

    pub fn gate_handle(&self) -> anyhow::Result<GateHandle> {
        Ok(GateHandle {
            gated: BpfHashMap::try_from(Map::HashMap(self.reopen("GATED")?))?,
            session: BpfHashMap::try_from(Map::HashMap(self.reopen("SESSION_GATE")?))?,
            all: Array::try_from(Map::Array(self.reopen("GATE_ALL")?))?,
            lost: BpfHashMap::try_from(Map::HashMap(self.reopen("LOST")?))?,
        })
    }

    /// A second file descriptor on one of the object's maps.
    fn reopen(&self, name: &str) -> anyhow::Result<MapData> {
        let data = match self.ebpf.map(name) {
            Some(Map::HashMap(d) | Map::Array(d) | Map::LpmTrie(d)) => d,
            _ => return Err(anyhow!("no {name} map")),
        };
        let id = data.info()?.id();
        MapData::from_id(id).with_context(|| format!("opening {name} again"))
    }
}

impl GateHandle {
    /// The gate answered for `tgid`: its entry goes.
    pub fn answered(&mut self, tgid: u32) {
        let _ = self.gated.remove(&tgid);
    }

    /// How many records of a session were lost since the last call (the count restarts).
    pub fn take_lost(&mut self, session_id: u64) -> u64 {
        let n = self.lost.get(&session_id, 0).unwrap_or(0);
        let _ = self.lost.remove(&session_id);
        n
    }

    /// Processes stopped by the gate with no answer yet.
    pub fn waiting(&self) -> Vec<(u32, Gated)> {
        self.gated.iter().filter_map(Result::ok).collect()
    }

    /// Sets the kinds gated for every event of a session (0 removes it). As for the
    /// kill-switch, the programs look the session up only while the count is not 0: it goes up
    /// before an entry is added and down after one is removed.
    pub fn set_session(&mut self, session_id: u64, kinds: u32) -> anyhow::Result<()> {
        let had = self.session.get(&session_id, 0).is_ok();
        if kinds == 0 {
            if had {
                let _ = self.session.remove(&session_id);
                self.set_count()?;
            }
            return Ok(());
        }
        if !had {
            let n = self.count()?;
            self.all.set(2, n + 1, 0).context("setting GATE_ALL")?;
        }
        self.session
            .insert(session_id, kinds, 0)
            .context("setting SESSION_GATE")?;
        if !had {
            self.set_count()?;
        }
        Ok(())
    }

    fn count(&self) -> anyhow::Result<u32> {
        Ok(self.session.keys().filter_map(Result::ok).count() as u32)
    }

    fn set_count(&mut self) -> anyhow::Result<()> {
        let n = self.count()?;
        self.all.set(2, n, 0).context("setting GATE_ALL")
    }
}
