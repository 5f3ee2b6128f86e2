//! Distribution families: everything imgspec knows about one kind of package manager, archive
//! and installed-package database.

pub mod debian;
