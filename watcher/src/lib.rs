//! watcher: watches AI agent process trees from the kernel.
pub mod config;
pub mod control;
pub mod daemon;
pub mod event;
pub mod intake;
pub mod kernel;
pub mod reload;
pub mod rules;
pub mod sessions;
