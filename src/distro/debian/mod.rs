//! The Debian family (Debian and Ubuntu): mmdebstrap, apt and dpkg.

pub mod apt;
pub mod archive;
pub mod bootstrap;
pub mod debstore;
pub mod host;
