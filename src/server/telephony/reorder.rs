//! Puts a carrier's media frames back in order by their chunk number (Telnyx does not promise
//! order). A frame that arrives after its successors were delivered is dropped; a gap that
//! stays open longer than the window is given up on, so one lost frame never stalls a call.

use std::collections::BTreeMap;

/// Frames held at most while waiting for a missing one (each is 20 ms of audio).
pub(crate) const REORDER_WINDOW: usize = 5;

/// Reorders frames by chunk number.
#[derive(Debug, Default)]
pub(crate) struct Reorder {
    /// The chunk number due next; wider than a chunk number, so the largest one has a successor.
    next: Option<u128>,
    pending: BTreeMap<u64, Vec<u8>>,
    /// Frames dropped as too late or duplicated.
    pub(crate) late: u64,
    /// Frames never received before their gap was given up on.
    pub(crate) lost: u64,
}

impl Reorder {
    /// Takes one frame (numbered, or not) and returns the frames now in order.
    pub(crate) fn push(&mut self, chunk: Option<u64>, audio: Vec<u8>) -> Vec<Vec<u8>> {
        let Some(chunk) = chunk else {
            return vec![audio];
        };
        if self.pending.contains_key(&chunk) || self.next.is_some_and(|n| u128::from(chunk) < n) {
            self.late += 1;
            return Vec::new();
        }
        self.pending.insert(chunk, audio);
        let mut out = Vec::new();
        if self.next.is_none() {
            // Carriers number from 1: a stream that opens with frame 2 or 3 waits for the
            // earlier ones as a gap later does, until they come or the window fills.
            let first = *self.pending.keys().next().expect("inserted above");
            if (2..=REORDER_WINDOW as u64 + 1).contains(&first)
                && self.pending.len() <= REORDER_WINDOW
            {
                return out;
            }
            self.next = Some(u128::from(first));
        }
        self.drain(&mut out);
        if self.pending.len() > REORDER_WINDOW {
            let first = u128::from(*self.pending.keys().next().expect("not empty"));
            let skipped = first - self.next.expect("set above");
            self.lost += u64::try_from(skipped).unwrap_or(u64::MAX);
            self.next = Some(first);
            self.drain(&mut out);
        }
        out
    }

    fn drain(&mut self, out: &mut Vec<Vec<u8>>) {
        let mut next = self.next.expect("set before draining");
        while let Some(audio) = u64::try_from(next)
            .ok()
            .and_then(|n| self.pending.remove(&n))
        {
            out.push(audio);
            next += 1;
        }
        self.next = Some(next);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn numbers(frames: Vec<Vec<u8>>) -> Vec<u8> {
        frames.into_iter().map(|f| f[0]).collect()
    }

    #[test]
    fn a_swapped_pair_comes_out_in_order() {
        let mut r = Reorder::default();
        assert_eq!(numbers(r.push(Some(1), vec![1])), [1]);
        assert!(r.push(Some(3), vec![3]).is_empty());
        assert_eq!(numbers(r.push(Some(2), vec![2])), [2, 3]);
        assert!(r.push(Some(2), vec![2]).is_empty(), "a duplicate");
        assert_eq!(r.late, 1);
    }

    #[test]
    fn a_stream_that_opens_with_its_first_two_frames_swapped_loses_neither() {
        let mut r = Reorder::default();
        assert!(
            r.push(Some(2), vec![2]).is_empty(),
            "frame 1 may still come"
        );
        assert_eq!(numbers(r.push(Some(1), vec![1])), [1, 2]);
        assert_eq!(numbers(r.push(Some(3), vec![3])), [3]);
        assert_eq!((r.late, r.lost), (0, 0));
        // Frame 1 never comes: the window decides, and the stream starts at 2.
        let mut r = Reorder::default();
        let mut out = Vec::new();
        for n in 2..=(2 + REORDER_WINDOW as u8) {
            out.extend(r.push(Some(u64::from(n)), vec![n]));
        }
        assert_eq!(
            numbers(out),
            (2..=(2 + REORDER_WINDOW as u8)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn the_largest_chunk_number_neither_overflows_nor_repeats() {
        let mut r = Reorder::default();
        assert_eq!(numbers(r.push(Some(u64::MAX - 1), vec![1])), [1]);
        assert_eq!(numbers(r.push(Some(u64::MAX), vec![2])), [2]);
        assert!(r.push(Some(u64::MAX), vec![3]).is_empty(), "a duplicate");
        assert!(r.push(Some(0), vec![4]).is_empty(), "late");
        assert_eq!(r.late, 2);
    }

    #[test]
    fn a_lost_frame_is_given_up_after_the_window() {
        let mut r = Reorder::default();
        r.push(Some(1), vec![1]);
        let mut out = Vec::new();
        for n in 3..=(3 + REORDER_WINDOW as u8) {
            out.extend(r.push(Some(u64::from(n)), vec![n]));
        }
        assert_eq!(
            numbers(out),
            (3..=(3 + REORDER_WINDOW as u8)).collect::<Vec<_>>()
        );
        assert_eq!(r.lost, 1);
        assert!(r.push(Some(2), vec![2]).is_empty(), "too late now");
    }

    proptest! {
        /// Any shuffle that moves frames less than the window apart comes out in order, whole.
        #[test]
        fn local_shuffles_are_undone(swaps in proptest::collection::vec(0usize..40, 0..30)) {
            let mut order: Vec<u64> = (1..=40).collect();
            for s in swaps {
                let j = (s + 1).min(39);
                order.swap(s, j);
            }
            // Keep displacement within the window.
            prop_assume!(order.iter().enumerate().all(|(i, n)| (i as i64 + 1 - *n as i64).unsigned_abs() < REORDER_WINDOW as u64));
            let mut r = Reorder::default();
            let mut out = Vec::new();
            // The stream starts with frame 1 so the reorderer knows where it begins.
            let first = order.iter().position(|n| *n == 1).unwrap();
            let head = order.remove(first);
            out.extend(r.push(Some(head), vec![head as u8]));
            for n in order {
                out.extend(r.push(Some(n), vec![n as u8]));
            }
            prop_assert_eq!(numbers(out), (1..=40).collect::<Vec<u8>>());
            prop_assert_eq!((r.late, r.lost), (0, 0));
        }
    }
}
