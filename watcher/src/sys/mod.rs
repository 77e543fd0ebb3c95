//! The host below the kernel programs: cgroups, /proc, users and groups, worker threads, and the
//! crash tests' fault-injection points.
pub mod boot;
pub mod cgroup;
pub mod fault;
pub mod fence;
pub mod files;
pub mod guardian;
pub mod keep;
pub mod peer;
pub mod pids;
pub mod procfs;
pub mod users;
pub mod view;
pub mod worker;
