//! The state machine every clone of a breaker shares.
//!
//! The state lives twice: authoritatively in `Core` behind a mutex, where
//! every transition happens, and published in one atomic word that the hot
//! path reads without locking. The word packs the state with a generation
//! that grows on every transition; a permit remembers the word it was issued
//! under, so an outcome that arrives after a transition (a call admitted
//! before the breaker opened, a probe of an earlier half-open) is ignored
//! rather than counted against a window it never belonged to.
//!
//! The closed, successful call costs one atomic load to admit and one short
//! critical section to record, and reads the clock only when a time window
//! or slow-call detection needs it.

use super::config::{Settings, WindowSettings};
use super::event::{BreakerEvent, CircuitSnapshot, CircuitState};
use super::window::Window;
use super::BreakerOpen;
use crate::observe::EventStream;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

const TAG_BITS: u32 = 3;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;
const CLOSED: u64 = CircuitState::Closed.tag();
const OPEN: u64 = CircuitState::Open.tag();
const HALF_OPEN: u64 = CircuitState::HalfOpen.tag();
const DISABLED: u64 = CircuitState::Disabled.tag();

/// What a permit remembers of its admission.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    word: u64,
    /// When the call started, in nanoseconds since the epoch plus one
    /// (zero: not measured); only taken when slow calls are detected. Two
    /// plain words keep the permit cheap to move.
    start: u64,
}

impl Ticket {
    pub fn state(&self) -> CircuitState {
        CircuitState::from_tag(self.word & TAG_MASK)
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Probes {
    in_flight: u32,
    recorded: u32,
    failures: u32,
    slow: u32,
}

#[derive(Debug)]
struct Core {
    word: u64,
    window: Window,
    probes: Probes,
    trips: u32,
    /// Nanoseconds since the epoch at which an open breaker may half-open.
    open_until: u64,
    /// Nanoseconds since the epoch past which half-open stops waiting for
    /// its probes (`u64::MAX`: it waits).
    half_open_until: u64,
}

/// The words every call reads, on a cache line of their own: the mutex
/// beside them is written by every call, and sharing its line would make
/// each admission on another core miss the cache.
#[derive(Debug)]
#[repr(align(128))]
struct Published {
    word: AtomicU64,
    /// Copy of `Core::open_until`, so rejecting needs no lock.
    open_until: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct Shared {
    published: Published,
    core: Mutex<Core>,
    settings: Settings,
    timed: bool,
    epoch: Instant,
    events: EventStream<BreakerEvent>,
    /// Set once anyone subscribes, so an unwatched breaker does not even
    /// build its events.
    watched: AtomicBool,
    name: Arc<str>,
}

/// Events gathered under the lock, published after it is released.
#[derive(Default)]
struct Pending(Vec<BreakerEvent>);

impl Shared {
    pub fn new(name: Arc<str>, settings: Settings) -> Self {
        let window = Window::new(settings.window);
        Shared {
            published: Published {
                word: AtomicU64::new(CLOSED),
                open_until: AtomicU64::new(0),
            },
            core: Mutex::new(Core {
                word: CLOSED,
                window,
                probes: Probes::default(),
                trips: 0,
                open_until: 0,
                half_open_until: u64::MAX,
            }),
            timed: matches!(settings.window, WindowSettings::Time { .. }),
            settings,
            epoch: Instant::now(),
            events: EventStream::default(),
            watched: AtomicBool::new(false),
            name,
        }
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<BreakerEvent> {
        self.watched.store(true, Ordering::Relaxed);
        self.events.subscribe()
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn now_nanos(&self) -> u64 {
        self.nanos(Instant::now())
    }

    fn start(&self) -> u64 {
        match self.settings.slow {
            Some(_) => self.now_nanos().saturating_add(1),
            None => 0,
        }
    }

    /// Admits a call, or says how long the breaker stays open.
    #[inline]
    pub fn acquire(&self) -> Result<Ticket, BreakerOpen> {
        let word = self.published.word.load(Ordering::Acquire);
        match word & TAG_MASK {
            CLOSED => Ok(Ticket {
                word,
                start: self.start(),
            }),
            DISABLED => Ok(Ticket { word, start: 0 }),
            _ => self.acquire_slow(word),
        }
    }

    #[cold]
    fn acquire_slow(&self, word: u64) -> Result<Ticket, BreakerOpen> {
        let now = self.now_nanos();
        if word & TAG_MASK == OPEN {
            // The common rejection, decided without the lock.
            let until = self.published.open_until.load(Ordering::Acquire);
            if now < until {
                return Err(self.reject(CircuitState::Open, Duration::from_nanos(until - now)));
            }
        }
        let mut pending = Pending::default();
        let verdict = {
            let mut core = self.core.lock();
            self.expire_open(&mut core, now, &mut pending);
            match CircuitState::from_tag(core.word & TAG_MASK) {
                CircuitState::Closed => Ok(Ticket {
                    word: core.word,
                    start: self.start(),
                }),
                CircuitState::Disabled => Ok(Ticket {
                    word: core.word,
                    start: 0,
                }),
                CircuitState::HalfOpen => {
                    let p = core.probes;
                    if p.in_flight + p.recorded < self.settings.half_open_calls {
                        core.probes.in_flight += 1;
                        Ok(Ticket {
                            word: core.word,
                            start: self.start(),
                        })
                    } else if now >= core.half_open_until {
                        // The probes took too long to give a verdict.
                        self.enter(&mut core, CircuitState::Open, &mut pending);
                        Err((
                            CircuitState::Open,
                            Duration::from_nanos(core.open_until.saturating_sub(now)),
                        ))
                    } else {
                        // The verdict is pending on the probes in flight.
                        Err((CircuitState::HalfOpen, Duration::ZERO))
                    }
                }
                CircuitState::Open => Err((
                    CircuitState::Open,
                    Duration::from_nanos(core.open_until.saturating_sub(now)),
                )),
                CircuitState::ForcedOpen => Err((CircuitState::ForcedOpen, Duration::ZERO)),
            }
        };
        self.publish(pending);
        verdict.map_err(|(state, retry_after)| self.reject(state, retry_after))
    }

    fn reject(&self, state: CircuitState, retry_after: Duration) -> BreakerOpen {
        if self.watched.load(Ordering::Relaxed) {
            self.events
                .emit(BreakerEvent::Rejected { state, retry_after });
        }
        BreakerOpen::new(retry_after)
    }

    /// Records the outcome of an admitted call. `duration` overrides the
    /// time measured since admission.
    #[inline]
    pub fn complete(&self, ticket: Ticket, failure: bool, duration: Option<Duration>) {
        let tag = ticket.word & TAG_MASK;
        if tag == DISABLED {
            return;
        }
        // One clock read serves both the call's duration and the time window.
        let measure = ticket.start > 0 && duration.is_none();
        let now = if measure || (self.timed && tag == CLOSED) {
            self.now_nanos()
        } else {
            0
        };
        let (duration, slow) = match self.settings.slow {
            None => (duration, false),
            Some((threshold, _)) => {
                let duration = match duration {
                    Some(d) => Some(d),
                    None if measure => {
                        Some(Duration::from_nanos(now.saturating_sub(ticket.start - 1)))
                    }
                    None => None,
                };
                (duration, duration.is_some_and(|d| d > threshold))
            }
        };
        let mut pending = Pending::default();
        {
            let mut core = self.core.lock();
            if core.word != ticket.word {
                return;
            }
            if (failure || slow) && self.watched.load(Ordering::Relaxed) {
                // A slow call always has a duration: slowness is judged by it.
                let event = if failure {
                    Some(BreakerEvent::Failure { duration, slow })
                } else {
                    duration.map(|duration| BreakerEvent::SlowSuccess { duration })
                };
                pending.0.extend(event);
            }
            if tag == CLOSED {
                core.window.record(now, failure, slow);
                let t = core.window.totals();
                if t.calls >= self.settings.minimum_calls
                    && self.reaches(t.failures, t.slow, t.calls)
                {
                    self.enter(&mut core, CircuitState::Open, &mut pending);
                }
            } else {
                self.record_probe(&mut core, failure, slow, &mut pending);
            }
        }
        self.publish(pending);
    }

    /// Half-open decides as soon as the probes' verdict is certain: when
    /// the failures so far already reach a threshold over all permitted
    /// probes, or when even every outstanding probe failing could not.
    fn record_probe(&self, core: &mut Core, failure: bool, slow: bool, pending: &mut Pending) {
        let p = &mut core.probes;
        p.in_flight = p.in_flight.saturating_sub(1);
        p.recorded += 1;
        p.failures += u32::from(failure);
        p.slow += u32::from(slow);
        let permitted = self.settings.half_open_calls;
        let outstanding = permitted.saturating_sub(p.recorded);
        if self.reaches(p.failures, p.slow, permitted) {
            self.enter(core, CircuitState::Open, pending);
        } else if !self.reaches(p.failures + outstanding, p.slow + outstanding, permitted) {
            self.enter(core, CircuitState::Closed, pending);
        }
    }

    fn reaches(&self, failures: u32, slow: u32, calls: u32) -> bool {
        Settings::reaches(failures, calls, self.settings.failure_bp)
            || self
                .settings
                .slow
                .is_some_and(|(_, bp)| Settings::reaches(slow, calls, bp))
    }

    /// Gives back a permit that ended without an outcome: a half-open probe
    /// frees its slot for another.
    pub fn release(&self, ticket: Ticket) {
        if ticket.word & TAG_MASK != HALF_OPEN {
            return;
        }
        let mut core = self.core.lock();
        if core.word == ticket.word {
            core.probes.in_flight = core.probes.in_flight.saturating_sub(1);
        }
    }

    /// Moves an open breaker whose time is up to half-open.
    fn expire_open(&self, core: &mut Core, now: u64, pending: &mut Pending) {
        if core.word & TAG_MASK == OPEN && now >= core.open_until {
            self.enter(core, CircuitState::HalfOpen, pending);
        }
    }

    /// Every transition: a new generation, an empty window, no probes.
    fn enter(&self, core: &mut Core, to: CircuitState, pending: &mut Pending) {
        let from = CircuitState::from_tag(core.word & TAG_MASK);
        let generation = (core.word >> TAG_BITS) + 1;
        core.word = (generation << TAG_BITS) | to.tag();
        core.window.clear();
        core.probes = Probes::default();
        match to {
            CircuitState::Open => {
                core.trips = core.trips.saturating_add(1);
                let open_for = self.settings.open_duration(core.trips);
                let nanos = u64::try_from(open_for.as_nanos()).unwrap_or(u64::MAX);
                core.open_until = self.now_nanos().saturating_add(nanos);
                self.published
                    .open_until
                    .store(core.open_until, Ordering::Release);
            }
            CircuitState::Closed => core.trips = 0,
            CircuitState::HalfOpen => {
                core.half_open_until = match self.settings.half_open_max_wait {
                    Some(wait) => self.now_nanos().saturating_add(wait),
                    None => u64::MAX,
                };
            }
            _ => {}
        }
        self.published.word.store(core.word, Ordering::Release);
        if from != to {
            pending.0.push(BreakerEvent::StateChanged { from, to });
        }
    }

    #[inline]
    fn publish(&self, pending: Pending) {
        if !pending.0.is_empty() {
            self.publish_slow(pending);
        }
    }

    #[cold]
    fn publish_slow(&self, pending: Pending) {
        let watched = self.watched.load(Ordering::Relaxed);
        for event in pending.0 {
            if let BreakerEvent::StateChanged { from, to } = event {
                if to == CircuitState::Open || to == CircuitState::ForcedOpen {
                    tracing::warn!(breaker = %self.name, %from, %to, "circuit breaker opened");
                } else {
                    tracing::info!(breaker = %self.name, %from, %to, "circuit breaker state changed");
                }
            }
            if watched {
                self.events.emit(event);
            }
        }
    }

    /// An operator's transition (force open, disable, reset to closed).
    pub fn force(&self, to: CircuitState) {
        let mut pending = Pending::default();
        {
            let mut core = self.core.lock();
            self.enter(&mut core, to, &mut pending);
        }
        self.publish(pending);
    }

    /// The state a call arriving now would meet.
    pub fn state(&self) -> CircuitState {
        let word = self.published.word.load(Ordering::Acquire);
        if word & TAG_MASK == OPEN
            && self.now_nanos() >= self.published.open_until.load(Ordering::Acquire)
        {
            return self.snapshot().state;
        }
        CircuitState::from_tag(word & TAG_MASK)
    }

    pub fn snapshot(&self) -> CircuitSnapshot {
        let now = self.now_nanos();
        let mut pending = Pending::default();
        let snapshot = {
            let mut core = self.core.lock();
            self.expire_open(&mut core, now, &mut pending);
            core.window.advance(now);
            let state = CircuitState::from_tag(core.word & TAG_MASK);
            let (calls, failed, slow, rated) = match state {
                CircuitState::Closed => {
                    let t = core.window.totals();
                    (
                        t.calls,
                        t.failures,
                        t.slow,
                        t.calls >= self.settings.minimum_calls,
                    )
                }
                CircuitState::HalfOpen => {
                    let p = core.probes;
                    (p.recorded, p.failures, p.slow, p.recorded > 0)
                }
                _ => (0, 0, 0, false),
            };
            let rate = |n: u32| rated.then(|| n as f32 * 100.0 / calls as f32);
            CircuitSnapshot {
                name: self.name.clone(),
                state,
                calls,
                failed_calls: failed,
                slow_calls: slow,
                failure_rate: rate(failed),
                slow_call_rate: rate(slow),
                probes_in_flight: core.probes.in_flight,
                half_open_in: (state == CircuitState::Open)
                    .then(|| Duration::from_nanos(core.open_until.saturating_sub(now))),
                consecutive_trips: core.trips,
            }
        };
        self.publish(pending);
        snapshot
    }
}
