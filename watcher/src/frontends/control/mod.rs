//! The control socket: JSON lines over a unix socket, root or the approver group only. The
//! protocol's types are in `model::protocol`.
pub mod client;
pub mod profiles;
pub mod server;
