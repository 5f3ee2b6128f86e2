//! imgspec: a declarative, reproducible builder of operating-system disk images.
//!
//! The data path is the module list: [`spec`] (KDL text to a validated model) → [`plan`] (a DAG
//! of keyed steps) → [`exec`] (runs the DAG over the store) → [`steps`] (one module per step
//! kind, using [`format`] writers and the [`runner`]) → the store (`imgspec-cache`) → outputs.
//! Only [`cli`] talks to the user. [`element`] (the built-in elements: their parameters, which
//! the spec reads, and their edits, which a step runs) sits below both `spec` and `steps`.

pub mod boot;
pub mod build;
pub mod cli;
pub mod distro;
pub mod element;
pub mod exec;
pub mod fetch;
pub mod foreign;
pub mod format;
pub mod ids;
pub mod key;
pub mod layout;
pub mod lockfile;
pub mod outdir;
pub mod plan;
pub mod runner;
pub mod spec;
pub mod steps;
pub mod tools;
