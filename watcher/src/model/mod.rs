//! The types every layer shares: events, sessions, holds, ids and the control protocol. Serde
//! only; nothing here imports another module of the crate.
pub mod baseline;
pub mod event;
pub mod hold;
pub mod ids;
pub mod protocol;
pub mod scope;
pub mod session;
