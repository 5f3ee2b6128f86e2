//! Integration tests: the real `imgspec` binary on spec files in a temporary workspace.

mod common;
mod debian;
mod elements;
mod engine;
mod fuzz;
mod lock;
mod remote;
mod repro;
mod usage;
