mod chdir;
mod connect;
mod exec;
mod exit;
mod floor;
mod fork;
mod open;
