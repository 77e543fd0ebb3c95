//! watcher: watches AI agent process trees from the kernel.
//!
//! The modules are layers along the path of an event, and every import points down the list:
//! `model` (shared types), `config`, `sys` (the host: cgroups, /proc, users), `kernel` (the
//! programs and their maps), `rules` (the rule language), `pipeline` (intake, detectors, the
//! bus), `enforce` (decisions, holds, the kill-switch, protected files), `state` (the one shared
//! handle), `frontends` (control socket, HTTP API) and `daemon` (wiring). `tests/layers.rs`
//! keeps it so.
pub mod model;

pub mod config;

pub mod sys;

pub mod kernel;

pub mod rules;

pub mod pipeline;

pub mod enforce;

pub mod state;

pub mod frontends;

pub mod daemon;
