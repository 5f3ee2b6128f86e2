//! Integration tests: the real `imgspec` binary on spec files in a temporary workspace.

mod common;
mod debian;
mod elements;
mod engine;
mod heal;
mod lock;
mod remote;
mod repro;
