//! The benchmark's floor: an empty program on every hook the watcher uses, i.e. what attaching
//! costs at all. The benchmark switches it off and on between chunks of one storm.
use anyhow::{anyhow, Context as _};
use aya::{
    programs::{
        links::CgroupAttachMode, BtfTracePoint, CgroupSockAddr, ProgramError, RawTracePoint,
        TracePoint,
    },
    Ebpf, EbpfLoader,
};

use super::{open_cgroup2_root, preflight, SyscallHooks, HOOKS, OBJECT};

const CONNECT: [&str; 2] = ["floor_connect4", "floor_connect6"];

pub struct Floor {
    ebpf: Ebpf,
    hooks: SyscallHooks,
    /// The attachments; dropping one detaches it.
    links: Vec<Box<dyn Send>>,
}

impl Floor {
    /// Loads the empty programs and attaches them.
    pub fn load(hooks: SyscallHooks) -> anyhow::Result<Floor> {
        preflight()?;
        let mut ebpf = EbpfLoader::new().load(OBJECT)?;
        program::<TracePoint>(&mut ebpf, "floor")?.load()?;
        match hooks {
            SyscallHooks::Classic => {}
            SyscallHooks::TpBtf => {
                let btf = aya::Btf::from_sys_fs().context("reading kernel BTF")?;
                program::<BtfTracePoint>(&mut ebpf, "floor_tp_btf")?.load("sys_exit", &btf)?;
            }
            SyscallHooks::RawTp => program::<RawTracePoint>(&mut ebpf, "floor_raw_tp")?.load()?,
        }
        for prog in CONNECT {
            program::<CgroupSockAddr>(&mut ebpf, prog)?
                .load()
                .with_context(|| format!("verifier rejected {prog}"))?;
        }
        let mut floor = Floor {
            ebpf,
            hooks,
            links: Vec::new(),
        };
        floor.attach()?;
        Ok(floor)
    }

    /// Attaches every program (nothing if they are attached).
    pub fn attach(&mut self) -> anyhow::Result<()> {
        if !self.links.is_empty() {
            return Ok(());
        }
        let ebpf = &mut self.ebpf;
        let p = program::<TracePoint>(ebpf, "floor")?;
        for (_, cat, name) in HOOKS {
            if self.hooks == SyscallHooks::Classic || *cat != "syscalls" {
                let id = p.attach(cat, name)?;
                self.links.push(Box::new(p.take_link(id)?));
            }
        }
        match self.hooks {
            SyscallHooks::Classic => {}
            SyscallHooks::TpBtf => {
                let p = program::<BtfTracePoint>(ebpf, "floor_tp_btf")?;
                let id = p.attach()?;
                self.links.push(Box::new(p.take_link(id)?));
            }
            SyscallHooks::RawTp => {
                let p = program::<RawTracePoint>(ebpf, "floor_raw_tp")?;
                let id = p.attach("sys_exit")?;
                self.links.push(Box::new(p.take_link(id)?));
            }
        }
        let (_, cgroup) = open_cgroup2_root()?;
        for prog in CONNECT {
            let p = program::<CgroupSockAddr>(ebpf, prog)?;
            let id = p.attach(&cgroup, CgroupAttachMode::Single)?;
            self.links.push(Box::new(p.take_link(id)?));
        }
        Ok(())
    }

    /// Detaches every program, all at once: a tracepoint's detach waits out RCU grace periods
    /// (~70 ms here), and detaches running together share them.
    pub fn detach(&mut self) {
        let links = std::mem::take(&mut self.links);
        std::thread::scope(|s| {
            for link in links {
                s.spawn(move || drop(link));
            }
        });
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    Ok(ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?
        .try_into()?)
}
