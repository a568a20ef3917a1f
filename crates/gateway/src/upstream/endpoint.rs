//! One endpoint of an upstream and the live state the balancer and the health
//! logic keep about it: outstanding requests, EWMA latency, active health, and
//! passive ejection.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// An address that requests can be sent to, with its weight and live state.
#[derive(Debug)]
pub struct Endpoint {
    address: Arc<str>,
    authority: http::uri::Authority,
    weight: u32,
    outstanding: AtomicUsize,
    /// EWMA of response latency in microseconds, as f64 bits.
    ewma_micros: AtomicU64,
    healthy: AtomicBool,
    /// Nanoseconds on the upstream's clock until which the endpoint is ejected; 0 when not.
    ejected_until: AtomicU64,
    pub(crate) consecutive_failures: AtomicU32,
    pub(crate) ejections: AtomicU32,
    /// Idle keep-alive connections of the native HTTP/1.1 engine.
    pub(crate) idle: crate::h1::IdleConns,
}

/// Weight of the newest latency sample in the EWMA.
const EWMA_ALPHA: f64 = 0.3;

impl Endpoint {
    /// An endpoint at `address` (`host:port`); `None` when the address is not one.
    pub fn new(address: &str, weight: u32) -> Option<Endpoint> {
        let authority: http::uri::Authority = address.parse().ok()?;
        authority.port_u16()?;
        Some(Endpoint {
            address: Arc::from(address),
            authority,
            weight: weight.max(1),
            outstanding: AtomicUsize::new(0),
            ewma_micros: AtomicU64::new(0f64.to_bits()),
            healthy: AtomicBool::new(true),
            ejected_until: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            idle: crate::h1::IdleConns::default(),
        })
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    pub(crate) fn address_arc(&self) -> &Arc<str> {
        &self.address
    }

    pub(crate) fn authority(&self) -> &http::uri::Authority {
        &self.authority
    }

    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// Requests sent and not yet answered.
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Smoothed response latency.
    pub fn ewma_latency(&self) -> Duration {
        Duration::from_micros(f64::from_bits(self.ewma_micros.load(Ordering::Relaxed)) as u64)
    }

    pub(crate) fn ewma_raw(&self) -> f64 {
        f64::from_bits(self.ewma_micros.load(Ordering::Relaxed))
    }

    pub(crate) fn observe_latency(&self, latency: Duration) {
        let sample = latency.as_micros() as f64;
        // A lost update under contention only skips one sample; no CAS loop needed.
        let old = self.ewma_raw();
        let new = if old == 0.0 {
            sample
        } else {
            old + EWMA_ALPHA * (sample - old)
        };
        self.ewma_micros.store(new.to_bits(), Ordering::Relaxed);
    }

    /// Whether active health checks consider the endpoint healthy.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub(crate) fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    pub(crate) fn ejected_until(&self) -> u64 {
        self.ejected_until.load(Ordering::Relaxed)
    }

    pub(crate) fn set_ejected_until(&self, nanos: u64) {
        self.ejected_until.store(nanos, Ordering::Relaxed);
    }

    /// Whether the endpoint may take traffic at `now` (nanoseconds on the upstream's clock).
    pub(crate) fn available(&self, now: u64) -> bool {
        self.is_healthy() && self.ejected_until() <= now
    }

    pub(crate) fn begin(self: &Arc<Self>) -> InFlight {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        InFlight {
            endpoint: self.clone(),
        }
    }
}

/// A request in flight to an endpoint; counted in `outstanding` until dropped.
#[derive(Debug)]
pub struct InFlight {
    endpoint: Arc<Endpoint>,
}

impl InFlight {
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}
