//! The live tail: how a live subscription learns of a committed append.
//!
//! An append made through an [`EventStore`](crate::EventStore) reports its
//! commit from the thread that saw it (`Namespace::write_then`: on SQLite the
//! writer thread right after the group's fsync, in commit order; on
//! PostgreSQL the appending task right after `COMMIT` returns). That report
//! puts the committed events at the end of a short in-memory tail and then
//! bumps a `watch` of the last committed position, which wakes the live
//! subscriptions at once — not after the appender's task is next scheduled,
//! and without a poll interval.
//!
//! A woken subscription takes its next events from the tail when the tail
//! holds the position right after its checkpoint, and otherwise reads them
//! from storage as before. The tail's guarantees are what make that safe:
//!
//! - it holds only committed events (the report runs after the commit), each
//!   exactly as stored;
//! - its positions are contiguous: an event is added only right after the
//!   tail's last one; a batch that would leave a hole (positions taken by an
//!   append this store did not see: another process, [`append_in`] in a
//!   caller's own transaction, or, on PostgreSQL, a commit whose report
//!   arrives after a later one's) empties the tail first, and a report older
//!   than the tail's end is dropped. So a subscription at checkpoint N that
//!   finds N + 1 in the tail gets N + 1, N + 2, … with nothing skipped, and
//!   whatever the tail cannot vouch for is read from storage, where
//!   positions are gap-free in commit order;
//! - the tail is filled before the `watch` is bumped, so a subscription that
//!   marks the notification seen and then finds nothing new is woken again.
//!
//! The tail is filled only while somebody subscribes, so appends without
//! subscribers pay nothing for it, and it is bounded by [`MAX_EVENTS`] and
//! [`MAX_BYTES`]; a subscription further behind reads from storage.
//!
//! [`append_in`]: crate::append_in

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::subscribe::SubscriptionTarget;
use crate::types::{category_of, AppendResult, EventData, RecordedEvent};

/// The most events the tail keeps.
pub(crate) const MAX_EVENTS: usize = 4096;
/// The most payload bytes (data + metadata + type) the tail keeps.
pub(crate) const MAX_BYTES: usize = 8 << 20;

pub(crate) struct Live {
    /// The last committed position this store knows of.
    appended: watch::Sender<u64>,
    tail: Mutex<Tail>,
}

#[derive(Default)]
struct Tail {
    /// Committed events with contiguous positions, oldest first; shared, so a
    /// subscription copies them outside the lock that the committing thread
    /// (on SQLite, the writer) also takes.
    events: VecDeque<Arc<RecordedEvent>>,
    bytes: usize,
}

fn size_of(e: &RecordedEvent) -> usize {
    e.data.get().len() + e.metadata.as_ref().map_or(0, |m| m.get().len()) + e.event_type.len()
}

impl Live {
    pub(crate) fn new(head: u64) -> Self {
        let (appended, _) = watch::channel(head);
        Live {
            appended,
            tail: Mutex::new(Tail::default()),
        }
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.appended.subscribe()
    }

    /// Wakes live subscriptions: positions up to `last` are committed.
    pub(crate) fn notify(&self, last: u64) {
        self.appended.send_if_modified(|v| {
            let newer = last > *v;
            if newer {
                *v = last;
            }
            newer
        });
    }

    /// Reports a committed append of `events` to `stream`, stored with
    /// `created_ms`; runs where the commit was seen (see the module docs).
    pub(crate) fn committed(
        &self,
        result: &AppendResult,
        stream: &str,
        events: Arc<Vec<EventData>>,
        created_ms: i64,
    ) {
        // An idempotent retry wrote nothing; without subscribers nobody reads the tail.
        if !result.idempotent && self.appended.receiver_count() > 0 {
            // The append body has finished with its copy by now, so this takes
            // the events without copying them.
            let events = Arc::try_unwrap(events).unwrap_or_else(|shared| (*shared).clone());
            let time = crate::read::time_of(created_ms);
            let recorded = events.into_iter().enumerate().map(|(i, e)| RecordedEvent {
                stream: stream.to_owned(),
                version: result.first_version + i as u64,
                position: result.first_position + i as u64,
                id: e.id,
                event_type: e.event_type,
                data: e.data,
                metadata: e.metadata,
                time,
            });
            self.push(result.first_position, recorded);
        }
        self.notify(result.last_position);
    }

    fn push(&self, first: u64, events: impl Iterator<Item = RecordedEvent>) {
        let mut tail = self.tail.lock();
        match tail.events.back().map(|e| e.position) {
            // A report older than the tail's end (PostgreSQL commits can report
            // out of order): those events are in storage; the tail stays contiguous.
            Some(last) if first <= last => return,
            Some(last) if first != last + 1 => {
                // A hole the tail cannot fill: start again from this batch.
                tail.events.clear();
                tail.bytes = 0;
            }
            _ => {}
        }
        for e in events {
            tail.bytes += size_of(&e);
            tail.events.push_back(Arc::new(e));
        }
        while tail.events.len() > MAX_EVENTS || (tail.bytes > MAX_BYTES && tail.events.len() > 1) {
            if let Some(old) = tail.events.pop_front() {
                tail.bytes -= size_of(&old);
            }
        }
    }

    /// Copies into `out` the tail's events after position `after` that match
    /// `target` and `types`, scanning at most `max_scan` events, and returns
    /// the last position scanned — or `None` when the tail does not hold
    /// `after + 1` (the caller then reads storage).
    pub(crate) fn take_after(
        &self,
        after: u64,
        target: &SubscriptionTarget,
        types: Option<&[String]>,
        max_scan: usize,
        out: &mut VecDeque<RecordedEvent>,
    ) -> Option<u64> {
        // Storage ignores an empty type list too.
        let types = types.filter(|t| !t.is_empty());
        let mut scanned = after;
        let mut matched = Vec::new();
        {
            let tail = self.tail.lock();
            let first = tail.events.front()?.position;
            let last = tail.events.back()?.position;
            if after < first.saturating_sub(1) || after >= last {
                return None;
            }
            // Positions are contiguous, so the index is the distance from the first.
            let start = usize::try_from(after + 1 - first).ok()?;
            for e in tail.events.range(start..).take(max_scan.max(1)) {
                scanned = e.position;
                let wanted = match target {
                    SubscriptionTarget::All => true,
                    SubscriptionTarget::Stream(s) => e.stream == *s,
                    SubscriptionTarget::Category(c) => category_of(&e.stream) == c,
                };
                if wanted && types.is_none_or(|t| t.contains(&e.event_type)) {
                    matched.push(e.clone());
                }
            }
        }
        out.extend(matched.into_iter().map(|e| (*e).clone()));
        Some(scanned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(first_position: u64, n: u64) -> AppendResult {
        AppendResult {
            first_version: 0,
            last_version: n - 1,
            first_position,
            last_position: first_position + n - 1,
            idempotent: false,
        }
    }

    fn batch(n: usize) -> Arc<Vec<EventData>> {
        Arc::new(
            (0..n)
                .map(|i| EventData::new(if i % 2 == 0 { "Even" } else { "Odd" }, &i).unwrap())
                .collect(),
        )
    }

    fn positions(out: &VecDeque<RecordedEvent>) -> Vec<u64> {
        out.iter().map(|e| e.position).collect()
    }

    #[test]
    fn serves_contiguous_positions_after_a_checkpoint() {
        let live = Live::new(0);
        let _rx = live.subscribe();
        live.committed(&result(1, 3), "order-1", batch(3), 0);
        live.committed(&result(4, 2), "user-1", batch(2), 0);
        let mut out = VecDeque::new();
        assert_eq!(
            live.take_after(0, &SubscriptionTarget::All, None, 100, &mut out),
            Some(5)
        );
        assert_eq!(positions(&out), [1, 2, 3, 4, 5]);
        out.clear();
        // A category and a type filter skip what does not match, and still scan past it.
        let target = SubscriptionTarget::Category("order".into());
        let types = ["Even".to_owned()];
        assert_eq!(
            live.take_after(1, &target, Some(&types), 100, &mut out),
            Some(5)
        );
        assert_eq!(positions(&out), [3]);
        out.clear();
        // Caught up, or behind the tail: storage decides.
        assert_eq!(
            live.take_after(5, &SubscriptionTarget::All, None, 100, &mut out),
            None
        );
        assert!(out.is_empty());
        // Scans at most `max_scan` events.
        assert_eq!(
            live.take_after(0, &SubscriptionTarget::All, None, 2, &mut out),
            Some(2)
        );
    }

    #[test]
    fn a_hole_empties_the_tail_and_a_late_report_is_dropped() {
        let live = Live::new(0);
        let _rx = live.subscribe();
        live.committed(&result(1, 2), "a-1", batch(2), 0);
        // Positions 3..=4 were taken by an append this store did not see.
        live.committed(&result(5, 1), "a-1", batch(1), 0);
        let mut out = VecDeque::new();
        assert_eq!(
            live.take_after(2, &SubscriptionTarget::All, None, 100, &mut out),
            None,
            "position 3 is not in the tail: read storage"
        );
        assert_eq!(
            live.take_after(4, &SubscriptionTarget::All, None, 100, &mut out),
            Some(5)
        );
        out.clear();
        // A report for positions the tail has passed (PostgreSQL reporting out of order).
        live.committed(&result(3, 2), "a-1", batch(2), 0);
        assert_eq!(
            live.take_after(2, &SubscriptionTarget::All, None, 100, &mut out),
            None
        );
        assert_eq!(*live.subscribe().borrow(), 5);
    }

    #[test]
    fn without_subscribers_only_the_position_moves() {
        let live = Live::new(7);
        live.committed(&result(8, 2), "a-1", batch(2), 0);
        assert!(live.tail.lock().events.is_empty());
        assert_eq!(*live.subscribe().borrow(), 9);
    }

    #[test]
    fn the_tail_is_bounded() {
        let live = Live::new(0);
        let _rx = live.subscribe();
        let mut next = 1;
        while next <= MAX_EVENTS as u64 + 10 {
            live.committed(&result(next, 10), "a-1", batch(10), 0);
            next += 10;
        }
        let tail = live.tail.lock();
        assert_eq!(tail.events.len(), MAX_EVENTS);
        assert_eq!(tail.events.back().map(|e| e.position), Some(next - 1));
    }
}
