//! Tiers: where a build looks for a step's result, in order. The local store is always first;
//! after it come any number of remote caches ([`Remote`], each over its own [`Backend`]), each
//! read-only (a developer's) or read-write (CI's).
//!
//! - **Lookup.** A local miss asks each remote in order; the first that has the step whole wins
//!   ([`Tiers::fetch_step`]). Everything it sends is checked against its digest on the way into
//!   the local store ([`Remote::fetch_step`], the only way in), so a hit in any remote *is* a
//!   local hit from then on.
//! - **Fill.** A hit in remote *k* fills the earlier tiers: the local store (always, by the
//!   fetch itself), and every read-write remote before *k* ([`Tiers::fill_targets`]: the step's
//!   record and its blobs are uploaded there, from the local store, as a step built here
//!   would be). Remotes after *k* and read-only remotes are never written.
//! - **Write.** A step built here goes to every read-write remote ([`Tiers::writable`]).
//! - **Trouble.** A remote that is down or refuses us is a miss for every step, said once
//!   ([`Remote::down_notice`]); a wrong object is a miss of that step in that remote only, and
//!   the next remote is asked. Nothing here fails a build.
//!
//! The local store is not behind [`Backend`] on purpose: it is where every check ends, the one
//! place anything fetched is written through [`crate::Store::adopt_compressed`]. A backend only
//! moves bytes, so no backend can let an unchecked byte in.
//!
//! [`Backend`]: crate::backend::Backend

use crate::{Remote, RemoteError, StepKey, StepRecord, Store};

/// Whether a build may write to a remote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Looked up, never written by a build.
    ReadOnly,
    /// Looked up; given every step built here and every step a later tier had.
    ReadWrite,
}

/// One remote of the list.
pub struct Tier {
    pub remote: Remote,
    pub mode: Mode,
}

/// The remotes after the local store, in the order they are asked. Indexes (`usize`) are
/// positions in this list: 0 is the first remote (the second tier, after the local store).
#[derive(Default)]
pub struct Tiers {
    tiers: Vec<Tier>,
}

/// A step found in a remote: already recorded in the local store.
pub struct Hit {
    pub record: StepRecord,
    /// The remote that had it.
    pub tier: usize,
}

impl Tiers {
    pub fn new(tiers: Vec<Tier>) -> Tiers {
        Tiers { tiers }
    }

    /// The local store only.
    pub const fn none() -> Tiers {
        Tiers { tiers: Vec::new() }
    }

    pub fn is_empty(&self) -> bool {
        self.tiers.is_empty()
    }

    pub fn len(&self) -> usize {
        self.tiers.len()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Tier> {
        self.tiers.iter()
    }

    pub fn remote(&self, i: usize) -> &Remote {
        &self.tiers[i].remote
    }

    /// The remotes a step built here goes to: every read-write one.
    pub fn writable(&self) -> Vec<usize> {
        self.fill_targets(self.tiers.len())
    }

    /// The remotes a step found in remote `found_in` is uploaded to: the read-write ones before
    /// it (the local store has it already).
    pub fn fill_targets(&self, found_in: usize) -> Vec<usize> {
        (0..found_in.min(self.tiers.len()))
            .filter(|&i| self.tiers[i].mode == Mode::ReadWrite)
            .collect()
    }

    /// The result of step `key` from the first remote that has it whole, fetched, checked and
    /// recorded in `store`; `None` if none has it. Each remote's trouble (down, or a refused
    /// object) goes to `trouble` with the remote's index, and the next remote is asked.
    pub fn fetch_step(
        &self,
        store: &Store,
        key: &StepKey,
        trouble: &mut dyn FnMut(usize, &RemoteError),
    ) -> Option<Hit> {
        for (i, t) in self.tiers.iter().enumerate() {
            match t.remote.fetch_step(store, key) {
                Ok(Some(record)) => return Some(Hit { record, tier: i }),
                Ok(None) => {}
                Err(e) => trouble(i, &e),
            }
        }
        None
    }

    /// Whether some remote that answers has the record of step `key` (a build would fetch it
    /// rather than build it). A remote in trouble counts as not having it.
    pub fn has_step(&self, key: &StepKey) -> bool {
        self.tiers
            .iter()
            .any(|t| t.remote.has_step(key).unwrap_or(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Credentials;

    fn tiers(modes: &[Mode]) -> Tiers {
        Tiers::new(
            modes
                .iter()
                .enumerate()
                .map(|(i, &mode)| Tier {
                    remote: Remote::new(&format!("http://h{i}.invalid/c"), Credentials::None)
                        .unwrap(),
                    mode,
                })
                .collect(),
        )
    }

    #[test]
    fn a_hit_fills_the_read_write_remotes_before_it_and_no_other() {
        use Mode::*;
        let t = tiers(&[ReadWrite, ReadOnly, ReadWrite, ReadOnly]);
        assert_eq!(t.writable(), vec![0, 2]);
        assert_eq!(t.fill_targets(0), Vec::<usize>::new());
        assert_eq!(t.fill_targets(1), vec![0]);
        assert_eq!(t.fill_targets(2), vec![0]);
        assert_eq!(t.fill_targets(3), vec![0, 2]);
        assert!(Tiers::none().writable().is_empty());
        assert!(tiers(&[ReadOnly, ReadOnly]).writable().is_empty());
    }

    #[test]
    fn every_remote_down_is_a_miss_said_once_each() {
        // Ports nothing listens on: bind, learn the port, close.
        let port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let t = Tiers::new(
            (0..2)
                .map(|_| Tier {
                    remote: Remote::new(
                        &format!("http://127.0.0.1:{}/c", port()),
                        Credentials::None,
                    )
                    .unwrap(),
                    mode: Mode::ReadWrite,
                })
                .collect(),
        );
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut said = Vec::new();
        for k in [b"a", b"b"] {
            let key = StepKey::from_hash(blake3::hash(k));
            let mut trouble = |i: usize, e: &RemoteError| {
                assert!(e.is_unavailable());
                if let Some(why) = t.remote(i).down_notice() {
                    said.push((i, why));
                }
            };
            assert!(t.fetch_step(&store, &key, &mut trouble).is_none());
        }
        assert_eq!(said.iter().map(|s| s.0).collect::<Vec<_>>(), vec![0, 1]);
        assert!(!t.has_step(&StepKey::from_hash(blake3::hash(b"a"))));
    }
}
