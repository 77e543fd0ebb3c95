//! Kernel struct member offsets (`task_struct`, `cred`, the cgroup path, `pt_regs`, ...) from
//! the running kernel's BTF.
use btf_rs::{Btf, Type};

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read kernel BTF {path}: {message}")]
    Read { path: String, message: String },
    #[error("kernel BTF: struct {0} not found")]
    NoStruct(String),
    #[error("kernel BTF: struct {0} has no member {1}")]
    NoMember(String, String),
}

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

pub struct KernelBtf(Btf);

impl KernelBtf {
    pub fn open() -> Result<KernelBtf, BtfError> {
        Btf::from_file(VMLINUX)
            .map(KernelBtf)
            .map_err(|e| BtfError::Read {
                path: VMLINUX.into(),
                message: e.to_string(),
            })
    }

    /// Byte offset of `member` in `struct name`, looking through anonymous structs and unions.
    pub fn member_offset(&self, name: &str, member: &str) -> Result<u32, BtfError> {
        let types = self
            .0
            .resolve_types_by_name(name)
            .map_err(|_| BtfError::NoStruct(name.into()))?;
        for t in types {
            if let Type::Struct(s) = t {
                if let Some(bits) = self.find(&s, member, 0) {
                    return Ok(bits / 8);
                }
                return Err(BtfError::NoMember(name.into(), member.into()));
            }
        }
        Err(BtfError::NoStruct(name.into()))
    }

    /// Offsets in `struct pt_regs` of syscall arguments 0 to 3 as they entered the kernel.
    pub fn syscall_arg_offsets(&self) -> Result<[u32; 4], BtfError> {
        #[cfg(target_arch = "x86_64")]
        {
            Ok([
                self.member_offset("pt_regs", "di")?,
                self.member_offset("pt_regs", "si")?,
                self.member_offset("pt_regs", "dx")?,
                // The syscall ABI passes the fourth argument in r10, not rcx.
                self.member_offset("pt_regs", "r10")?,
            ])
        }
        #[cfg(target_arch = "aarch64")]
        {
            // x0 is overwritten with the return value; the kernel keeps the argument aside.
            let regs = self.member_offset("pt_regs", "regs")?;
            Ok([
                self.member_offset("pt_regs", "orig_x0")?,
                regs + 8,
                regs + 16,
                regs + 24,
            ])
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            compile_error!("syscall argument registers: only x86_64 and aarch64 are supported");
        }
    }

    /// Offset in `struct pt_regs` of syscall argument 4.
    pub fn syscall_arg4_offset(&self) -> Result<u32, BtfError> {
        #[cfg(target_arch = "x86_64")]
        {
            self.member_offset("pt_regs", "r8")
        }
        #[cfg(target_arch = "aarch64")]
        {
            Ok(self.member_offset("pt_regs", "regs")? + 32)
        }
    }

    /// Offset in `struct pt_regs` of the syscall's return value, as the `sys_exit`
    /// tracepoints see it.
    pub fn syscall_ret_offset(&self) -> Result<u32, BtfError> {
        #[cfg(target_arch = "x86_64")]
        {
            self.member_offset("pt_regs", "ax")
        }
        #[cfg(target_arch = "aarch64")]
        {
            self.member_offset("pt_regs", "regs")
        }
    }

    /// Offset in `struct pt_regs` of the syscall number the task is in.
    pub fn syscall_nr_offset(&self) -> Result<u32, BtfError> {
        #[cfg(target_arch = "x86_64")]
        {
            self.member_offset("pt_regs", "orig_ax")
        }
        #[cfg(target_arch = "aarch64")]
        {
            self.member_offset("pt_regs", "syscallno")
        }
    }

    fn find(&self, s: &btf_rs::Struct, member: &str, base_bits: u32) -> Option<u32> {
        for m in &s.members {
            let name = self.0.resolve_name(m).unwrap_or_default();
            let bits = base_bits + m.bit_offset();
            if name == member {
                return Some(bits);
            }
            if name.is_empty() {
                if let Ok(Type::Struct(inner) | Type::Union(inner)) = self.0.resolve_chained_type(m)
                {
                    if let Some(found) = self.find(&inner, member, bits) {
                        return Some(found);
                    }
                }
            }
        }
        None
    }
}
