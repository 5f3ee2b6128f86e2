//! The Debian family (Debian and Ubuntu): mmdebstrap, apt and dpkg.

pub mod apt;
pub mod bootstrap;
pub mod host;
