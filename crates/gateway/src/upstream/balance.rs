//! Load balancing over an endpoint set: round robin, smooth weighted round
//! robin, power of two choices on outstanding requests or on EWMA latency,
//! and consistent hashing on a ring so that a key keeps reaching the same
//! endpoint and only the keys of a departed endpoint move.
//!
//! Every policy skips endpoints that are unhealthy or ejected. Everything a
//! policy needs is precomputed when the endpoint set changes, so a pick takes
//! no lock and allocates nothing.

use super::endpoint::Endpoint;
use crate::config::{HashOn, LbPolicy};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Virtual nodes per unit of weight on the hash ring.
const VNODES_PER_WEIGHT: u32 = 160;
/// Longest precomputed weighted round-robin schedule.
const MAX_SCHEDULE: u64 = 65_536;

/// An immutable set of endpoints with the tables its policy needs.
#[derive(Debug, Default)]
pub struct EndpointSet {
    pub(crate) endpoints: Vec<Arc<Endpoint>>,
    /// Smooth weighted round-robin order, as indexes into `endpoints`.
    schedule: Vec<u32>,
    /// Sorted (hash, endpoint index) pairs of the consistent-hash ring.
    ring: Vec<(u64, u32)>,
}

impl EndpointSet {
    pub(crate) fn new(endpoints: Vec<Arc<Endpoint>>, policy: LbPolicy) -> EndpointSet {
        let schedule = if policy == LbPolicy::Weighted {
            smooth_weighted_schedule(&endpoints)
        } else {
            Vec::new()
        };
        let ring = if policy == LbPolicy::ConsistentHash {
            build_ring(&endpoints)
        } else {
            Vec::new()
        };
        EndpointSet {
            endpoints,
            schedule,
            ring,
        }
    }

    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }
}

/// The smooth weighted round robin of nginx: interleaves endpoints in
/// proportion to their weights instead of sending bursts to the heaviest.
fn smooth_weighted_schedule(endpoints: &[Arc<Endpoint>]) -> Vec<u32> {
    if endpoints.is_empty() {
        return Vec::new();
    }
    let weights: Vec<u64> = endpoints.iter().map(|e| u64::from(e.weight())).collect();
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let mut weights: Vec<i64> = weights.iter().map(|w| (w / g) as i64).collect();
    let mut total: u64 = weights.iter().map(|w| *w as u64).sum();
    if total > MAX_SCHEDULE {
        // Scale down, keeping every endpoint in the schedule.
        let scale = total as f64 / MAX_SCHEDULE as f64;
        for w in &mut weights {
            *w = ((*w as f64 / scale) as i64).max(1);
        }
        total = weights.iter().map(|w| *w as u64).sum();
    }
    let total_i = total as i64;
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..weights.len() {
            current[i] += weights[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total_i;
        order.push(best as u32);
    }
    order
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn build_ring(endpoints: &[Arc<Endpoint>]) -> Vec<(u64, u32)> {
    let mut ring = Vec::new();
    for (i, e) in endpoints.iter().enumerate() {
        for v in 0..e.weight().saturating_mul(VNODES_PER_WEIGHT) {
            let mut h = Fnv::new();
            h.write(e.address().as_bytes());
            h.write(b"#");
            h.write(&v.to_le_bytes());
            ring.push((h.finish(), i as u32));
        }
    }
    ring.sort_unstable();
    ring
}

/// FNV-1a with a final avalanche: stable across processes and versions, so a
/// fleet of gateways agrees on where a key lives.
pub(crate) struct Fnv(u64);

impl Fnv {
    pub(crate) fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    pub(crate) fn finish(&self) -> u64 {
        // splitmix64 finaliser: FNV alone clusters similar keys on the ring.
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

pub(crate) fn hash_key(key: &[u8]) -> u64 {
    let mut h = Fnv::new();
    h.write(key);
    h.finish()
}

/// Where a consistent-hash key comes from in a request.
#[derive(Debug, Clone)]
pub(crate) enum HashSource {
    Header(http::HeaderName),
    Cookie(String),
    PathSegment(usize),
}

impl HashSource {
    pub(crate) fn from_config(h: &HashOn) -> Option<HashSource> {
        if let Some(name) = &h.header {
            return http::HeaderName::from_bytes(name.as_bytes())
                .ok()
                .map(HashSource::Header);
        }
        if let Some(c) = &h.cookie {
            return Some(HashSource::Cookie(c.clone()));
        }
        h.path_segment.map(HashSource::PathSegment)
    }

    /// The key's hash in `req`, or `None` when the request does not carry it.
    pub(crate) fn hash(&self, uri: &http::Uri, headers: &http::HeaderMap) -> Option<u64> {
        match self {
            HashSource::Header(name) => headers.get(name).map(|v| hash_key(v.as_bytes())),
            HashSource::Cookie(name) => headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    (k == name).then(|| hash_key(v.as_bytes()))
                }),
            HashSource::PathSegment(n) => uri
                .path()
                .split('/')
                .filter(|s| !s.is_empty())
                .nth(*n)
                .map(|s| hash_key(s.as_bytes())),
        }
    }
}

/// Picks endpoints from a set according to a policy.
#[derive(Debug)]
pub(crate) struct Balancer {
    policy: LbPolicy,
    cursor: AtomicUsize,
}

impl Balancer {
    pub(crate) fn new(policy: LbPolicy) -> Balancer {
        Balancer {
            policy,
            cursor: AtomicUsize::new(fastrand::usize(..1 << 16)),
        }
    }

    /// An available endpoint of `set` at `now`, or `None` when none is.
    pub(crate) fn pick<'a>(
        &self,
        set: &'a EndpointSet,
        now: u64,
        key: Option<u64>,
    ) -> Option<&'a Arc<Endpoint>> {
        let eps = &set.endpoints;
        match eps.len() {
            0 => return None,
            1 => return eps.first().filter(|e| e.available(now)),
            _ => {}
        }
        match self.policy {
            LbPolicy::RoundRobin => self.round_robin(eps, now),
            LbPolicy::Weighted => {
                let n = set.schedule.len();
                let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|i| &eps[set.schedule[(start + i) % n] as usize])
                    .find(|e| e.available(now))
            }
            LbPolicy::LeastRequest => self.two_choices(eps, now, |e| e.outstanding() as f64),
            // Latency times load, so a fast endpoint does not drown in queued work.
            LbPolicy::Ewma => {
                self.two_choices(eps, now, |e| e.ewma_raw() * (e.outstanding() as f64 + 1.0))
            }
            LbPolicy::ConsistentHash => match key {
                Some(k) => ring_lookup(set, k, now),
                None => self.round_robin(eps, now),
            },
        }
    }

    fn round_robin<'a>(&self, eps: &'a [Arc<Endpoint>], now: u64) -> Option<&'a Arc<Endpoint>> {
        let n = eps.len();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &eps[(start + i) % n])
            .find(|e| e.available(now))
    }

    fn two_choices<'a>(
        &self,
        eps: &'a [Arc<Endpoint>],
        now: u64,
        cost: impl Fn(&Endpoint) -> f64,
    ) -> Option<&'a Arc<Endpoint>> {
        let n = eps.len();
        let a = fastrand::usize(..n);
        let b = (a + 1 + fastrand::usize(..n - 1)) % n;
        match (eps[a].available(now), eps[b].available(now)) {
            (true, true) => Some(if cost(&eps[b]) < cost(&eps[a]) {
                &eps[b]
            } else {
                &eps[a]
            }),
            (true, false) => Some(&eps[a]),
            (false, true) => Some(&eps[b]),
            (false, false) => self.round_robin(eps, now),
        }
    }
}

/// The first available endpoint clockwise from `key` on the ring.
fn ring_lookup(set: &EndpointSet, key: u64, now: u64) -> Option<&Arc<Endpoint>> {
    let ring = &set.ring;
    if ring.is_empty() {
        return None;
    }
    let start = ring.partition_point(|(h, _)| *h < key);
    (0..ring.len())
        .map(|i| &set.endpoints[ring[(start + i) % ring.len()].1 as usize])
        .find(|e| e.available(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(weights: &[u32], policy: LbPolicy) -> EndpointSet {
        let eps = weights
            .iter()
            .enumerate()
            .map(|(i, w)| Arc::new(Endpoint::new(&format!("10.0.0.{i}:80"), *w).unwrap()))
            .collect();
        EndpointSet::new(eps, policy)
    }

    #[test]
    fn smooth_weighted_interleaves_in_proportion() {
        let s = set(&[5, 1, 1], LbPolicy::Weighted);
        let names = s.schedule.clone();
        assert_eq!(names, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn ring_moves_only_the_departed_endpoints_keys() {
        let full = set(&[1, 1, 1, 1], LbPolicy::ConsistentHash);
        let fewer = EndpointSet::new(full.endpoints[..3].to_vec(), LbPolicy::ConsistentHash);
        let mut moved = 0;
        for k in 0..2000u32 {
            let h = hash_key(format!("user-{k}").as_bytes());
            let a = ring_lookup(&full, h, 0).unwrap().address().to_owned();
            let b = ring_lookup(&fewer, h, 0).unwrap().address().to_owned();
            if a != b {
                assert_eq!(a, "10.0.0.3:80", "a key of a remaining endpoint moved");
                moved += 1;
            }
        }
        // Roughly a quarter of the keys lived on the departed endpoint.
        assert!((300..700).contains(&moved), "moved {moved}");
    }
}
