//! The event IDs of the stored batches, indexed in memory (SQLite only).
//!
//! On SQLite an event ID is remembered in one of two places: in the `event_ids` column of its
//! batch while the batch is stored, and in `mx_event_seen` once the handled batch is deleted
//! (one insert for many batches, see `Store::record_handled`). The intake must find IDs
//! of the first kind without an index on them in the database (that index, keyed by random
//! hashes, cost one dirtied page per event in every commit), so this process keeps one: a
//! 64-bit fingerprint of each ID, mapped to its batch.
//!
//! The index only says where to look. A fingerprint that matches is checked against its batch's
//! stored IDs, so a collision never drops an event; and it must never miss, so it is built from
//! every stored batch before the first transaction is accepted, and a batch is added once its
//! insert committed (an intake dropped between the two, its client gone, has the index built
//! again before the next one). A batch deleted from the database is forgotten after the delete
//! committed (until then its IDs are in both places). One intake per database, as always:
//! another process's new batches are not in this index.

use std::hash::BuildHasher;

use crate::util::FastMap;

/// Entries a map keeps room for however empty it gets.
const MIN_KEPT: usize = 4096;

/// See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct SeenWindow {
    /// Keys the fingerprints, per process, so nobody can aim at a collision.
    keys: foldhash::quality::RandomState,
    /// Fingerprint → the batch holding an event with it.
    by_id: FastMap<u64, i64>,
    /// Fingerprints that were already in `by_id` for another batch (rare: a 64-bit collision,
    /// or one event ID in two batches, which the intake does not store).
    more: Vec<(u64, i64)>,
    /// Batch → the fingerprints of its events, to forget it.
    by_batch: FastMap<i64, Box<[u64]>>,
}

impl SeenWindow {
    /// The fingerprint of an event ID.
    pub(crate) fn fingerprint(&self, event_id: &str) -> u64 {
        self.keys.hash_one(event_id)
    }

    /// Indexes a stored batch's event IDs (again: a batch already known is replaced).
    pub(crate) fn add<'a>(&mut self, seq: i64, event_ids: impl IntoIterator<Item = &'a str>) {
        self.forget(seq);
        let fingerprints: Box<[u64]> =
            event_ids.into_iter().map(|id| self.fingerprint(id)).collect();
        for &fp in &fingerprints {
            match self.by_id.entry(fp) {
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(seq);
                }
                std::collections::hash_map::Entry::Occupied(_) => self.more.push((fp, seq)),
            }
        }
        self.by_batch.insert(seq, fingerprints);
    }

    /// Forgets a batch (deleted from the database).
    pub(crate) fn forget(&mut self, seq: i64) {
        let Some(fingerprints) = self.by_batch.remove(&seq) else { return };
        for fp in fingerprints {
            if self.by_id.get(&fp) == Some(&seq) {
                self.by_id.remove(&fp);
                // Another batch with this fingerprint takes its place.
                if let Some(k) = self.more.iter().position(|&(f, _)| f == fp) {
                    let (_, other) = self.more.swap_remove(k);
                    self.by_id.insert(fp, other);
                }
            } else if let Some(k) = self.more.iter().position(|&(f, s)| f == fp && s == seq) {
                self.more.swap_remove(k);
            }
        }
        // A drained backlog gives its memory back: shrink to twice what is left once a quarter
        // of the room is used (amortized: each shrink needs the size to halve again).
        if self.by_id.capacity() > MIN_KEPT && self.by_id.len() * 4 < self.by_id.capacity() {
            self.by_id.shrink_to(self.by_id.len() * 2);
        }
        if self.by_batch.capacity() > MIN_KEPT && self.by_batch.len() * 4 < self.by_batch.capacity()
        {
            self.by_batch.shrink_to(self.by_batch.len() * 2);
        }
    }

    /// The batches that may hold an event with this fingerprint.
    pub(crate) fn batches_of(&self, fp: u64, out: &mut Vec<i64>) {
        if let Some(&seq) = self.by_id.get(&fp) {
            out.push(seq);
            if !self.more.is_empty() {
                out.extend(self.more.iter().filter(|&&(f, _)| f == fp).map(|&(_, s)| s));
            }
        }
    }

    /// How many event IDs are indexed.
    pub(crate) fn len(&self) -> usize {
        self.by_id.len() + self.more.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_found_by_their_ids_until_forgotten() {
        let mut w = SeenWindow::default();
        w.add(1, ["$a", "$b"]);
        w.add(2, ["$c"]);
        let mut out = vec![];
        w.batches_of(w.fingerprint("$b"), &mut out);
        assert_eq!(out, [1]);
        out.clear();
        w.batches_of(w.fingerprint("$z"), &mut out);
        assert!(out.is_empty());
        w.forget(1);
        w.batches_of(w.fingerprint("$a"), &mut out);
        assert!(out.is_empty());
        w.batches_of(w.fingerprint("$c"), &mut out);
        assert_eq!(out, [2]);
        assert_eq!(w.len(), 1);
        // Forgetting an unknown batch changes nothing.
        w.forget(9);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn a_drained_backlog_gives_its_memory_back() {
        let mut w = SeenWindow::default();
        let ids: Vec<String> = (0..100_000).map(|i| format!("$e{i}")).collect();
        for (seq, chunk) in ids.chunks(100).enumerate() {
            w.add(seq as i64, chunk.iter().map(String::as_str));
        }
        let full = w.by_id.capacity();
        assert!(full >= 100_000);
        for seq in 0..990 {
            w.forget(seq);
        }
        assert_eq!(w.len(), 1000);
        assert!(w.by_id.capacity() < full / 16, "{} of {full}", w.by_id.capacity());
        // What is left is still found.
        let mut out = vec![];
        w.batches_of(w.fingerprint("$e99999"), &mut out);
        assert_eq!(out, [999]);
    }

    #[test]
    fn a_fingerprint_in_two_batches_finds_both_until_each_is_forgotten() {
        let mut w = SeenWindow::default();
        w.add(1, ["$same"]);
        w.add(2, ["$same"]);
        w.add(3, ["$same"]);
        let fp = w.fingerprint("$same");
        let mut out = vec![];
        w.batches_of(fp, &mut out);
        out.sort_unstable();
        assert_eq!(out, [1, 2, 3]);
        w.forget(1);
        out.clear();
        w.batches_of(fp, &mut out);
        out.sort_unstable();
        assert_eq!(out, [2, 3]);
        w.forget(3);
        out.clear();
        w.batches_of(fp, &mut out);
        assert_eq!(out, [2]);
        w.forget(2);
        out.clear();
        w.batches_of(fp, &mut out);
        assert!(out.is_empty());
        assert_eq!(w.len(), 0);
    }
}
