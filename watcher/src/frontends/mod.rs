//! How people and tools reach the daemon: the control socket (the CLI) and the HTTP API.
pub mod api;
pub mod control;
pub mod metrics;
