//! Live subscriptions: catch up from storage, then follow new appends.
//!
//! A subscription remembers the position of the last event it delivered and
//! reads the next page after that position, so there is no separate "live"
//! path that could skip or repeat an event at the switch-over: the append's
//! commit wakes it (a `tokio::sync::watch` of the last committed position),
//! and it takes the events after its position from the in-memory tail of
//! committed events when that tail holds the next one (`crate::live`), or
//! else from storage.
//! Each page is read in one snapshot together with the head position, so with
//! a type filter the subscription also skips past non-matching events it has
//! already scanned. A periodic poll covers appends made by other processes
//! sharing a PostgreSQL store.

use std::collections::VecDeque;
use std::time::Duration;

use futures::Stream;
use tokio::sync::watch;

use crate::error::ReadError;
use crate::read::{head_in, read_by_position};
use crate::types::{Direction, ReadAll, RecordedEvent};
use crate::EventStore;

/// What a subscription follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionTarget {
    All,
    Stream(String),
    Category(String),
}

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// Every event from position 1.
    Beginning,
    /// Events after this global position: a checkpoint saved by the consumer.
    After(u64),
    /// Only events appended after the subscription is made. "Now" is the last
    /// position appended through this `EventStore` (or the head when it was
    /// opened): exact in-process; appends by other processes sharing a
    /// PostgreSQL store that this one has not yet observed may be included.
    End,
}

/// Options of a subscription.
#[derive(Debug, Clone)]
pub struct SubscriptionOptions {
    pub target: SubscriptionTarget,
    pub from: StartFrom,
    /// Only these event types, when set.
    pub types: Option<Vec<String>>,
    /// Events read from storage per round trip while catching up.
    pub page_size: usize,
    /// How often to look for appends made by other processes.
    pub poll_interval: Duration,
}

impl SubscriptionOptions {
    pub fn new(target: SubscriptionTarget, from: StartFrom) -> Self {
        SubscriptionOptions {
            target,
            from,
            types: None,
            page_size: 500,
            poll_interval: Duration::from_millis(500),
        }
    }

    pub fn with_types(mut self, types: Vec<String>) -> Self {
        self.types = Some(types);
        self
    }
}

struct State {
    store: EventStore,
    opts: SubscriptionOptions,
    /// Every event at or below this position has been delivered or skipped.
    checkpoint: Option<u64>,
    /// On a stream: every event of it below this version has been delivered
    /// or skipped, so storage reads can start their index scan there.
    stream_floor: Option<u64>,
    buffer: VecDeque<RecordedEvent>,
    wake: watch::Receiver<u64>,
    /// The last position this process had appended when the subscription was made.
    end: u64,
    failed: bool,
}

impl State {
    async fn fetch(&mut self) -> Result<(), ReadError> {
        let after = match self.checkpoint {
            Some(p) => p,
            None => {
                let start = match self.opts.from {
                    StartFrom::Beginning => 0,
                    StartFrom::After(p) => p,
                    StartFrom::End => self.end,
                };
                self.checkpoint = Some(start);
                start
            }
        };
        // Live: the events right after `after`, if the in-memory tail of
        // committed events holds them (it vouches for contiguity; see `live`).
        if let Some(scanned) = self.store.live().take_after(
            after,
            &self.opts.target,
            self.opts.types.as_deref(),
            self.opts.page_size,
            &mut self.buffer,
        ) {
            self.checkpoint = Some(scanned);
            return Ok(());
        }
        let key = match &self.opts.target {
            SubscriptionTarget::All => None,
            SubscriptionTarget::Stream(s) => Some(("stream".to_owned(), s.clone())),
            SubscriptionTarget::Category(c) => Some(("category".to_owned(), c.clone())),
        };
        let read = ReadAll {
            from: Some(after + 1),
            direction: Direction::Forward,
            max_count: self.opts.page_size,
            types: self.opts.types.clone(),
        };
        let page = self.opts.page_size;
        let floor = self.stream_floor;
        let (events, head) = self
            .store
            .namespace()
            .read(move |tx| {
                Box::pin(async move {
                    let head = head_in(tx).await?;
                    let key = key.as_ref().map(|(c, v)| (c.as_str(), v.as_str()));
                    let events = read_by_position(tx, key, &read, floor).await?;
                    Ok::<_, ReadError>((events, head))
                })
            })
            .await?;
        let short = events.len() < page;
        self.buffer.extend(events);
        if short && head > after {
            // Everything up to `head` was in this snapshot: what matched is in
            // the buffer, and the rest need never be scanned again.
            self.checkpoint = Some(head);
        }
        Ok(())
    }
}

pub(crate) fn subscribe(
    store: EventStore,
    opts: SubscriptionOptions,
    wake: watch::Receiver<u64>,
) -> impl Stream<Item = Result<RecordedEvent, ReadError>> + Send + 'static {
    let end = *wake.borrow();
    let state = State {
        store,
        opts,
        checkpoint: None,
        stream_floor: None,
        buffer: VecDeque::new(),
        wake,
        end,
        failed: false,
    };
    futures::stream::unfold(state, |mut s| async move {
        if s.failed {
            return None;
        }
        loop {
            if let Some(e) = s.buffer.pop_front() {
                if s.checkpoint.is_none_or(|c| e.position > c) {
                    s.checkpoint = Some(e.position);
                }
                if matches!(s.opts.target, SubscriptionTarget::Stream(_)) {
                    s.stream_floor = Some(e.version + 1);
                }
                return Some((Ok(e), s));
            }
            // Mark the current notification seen *before* reading, so an
            // append that commits after our read still wakes us.
            s.wake.borrow_and_update();
            if let Err(e) = s.fetch().await {
                s.failed = true;
                return Some((Err(e), s));
            }
            if !s.buffer.is_empty() {
                continue;
            }
            let poll = s.opts.poll_interval;
            tokio::select! {
                changed = s.wake.changed() => {
                    if changed.is_err() {
                        // The store was dropped: nothing more will come.
                        return None;
                    }
                }
                _ = tokio::time::sleep(poll) => {}
            }
        }
    })
}
