//! Integration tests: the real `imgspec` binary on spec files in a temporary workspace.

mod boot;
mod claims;
mod common;
mod debian;
mod diff;
mod dnf;
mod dot;
mod elements;
mod engine;
mod examples;
mod formats;
mod fuzz;
mod heal;
mod help;
mod import;
mod lock;
mod remote;
mod repro;
mod s3;
mod sandbox;
mod tiers;
mod usage;
