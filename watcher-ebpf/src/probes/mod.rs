mod chdir;
mod connect;
mod deny;
mod exec;
mod exit;
mod floor;
mod fork;
mod open;
