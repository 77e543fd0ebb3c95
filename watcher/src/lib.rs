//! watcher: watches AI agent process trees from the kernel.
pub mod api;
pub mod approvals;
pub mod config;
pub mod control;
pub mod daemon;
pub mod decide;
pub mod event;
pub mod freeze;
pub mod intake;
pub mod kernel;
pub mod killswitch;
pub mod model;
pub mod protect;
pub mod reload;
pub mod rules;
pub mod sessions;
pub mod tamper;
