//! The types every layer shares. Nothing here imports another module of the crate.
pub mod ids;
