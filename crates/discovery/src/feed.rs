//! The gateway feed: a service's served instances as an endpoint list that
//! follows the registry by watch — a new list is yielded as soon as the
//! service changes, never by polling — ready for
//! `trellis_gateway::upstream::Upstream::set_endpoints`.

use std::time::Duration;

use futures::Stream;

use crate::model::{Filter, Instance};
use crate::registry::Registry;

/// One endpoint for a load balancer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FeedEndpoint {
    /// `host:port`.
    pub address: String,
    /// From the instance's `weight` metadata (1 when absent or not a number).
    pub weight: u32,
}

impl From<FeedEndpoint> for (String, u32) {
    fn from(e: FeedEndpoint) -> Self {
        (e.address, e.weight)
    }
}

fn endpoint(i: &Instance) -> FeedEndpoint {
    FeedEndpoint {
        address: i.authority(),
        weight: i
            .meta
            .get("weight")
            .and_then(|w| w.parse::<u32>().ok())
            .filter(|w| *w > 0)
            .unwrap_or(1),
    }
}

/// The endpoints of `instances`, sorted and without duplicates, so that two
/// lists compare equal exactly when a load balancer would see no change.
pub fn endpoints(instances: &[Instance]) -> Vec<FeedEndpoint> {
    let mut list: Vec<FeedEndpoint> = instances.iter().map(endpoint).collect();
    list.sort();
    list.dedup();
    list
}

/// The endpoints of `service` matching `filter` (served instances only, unless
/// the filter says otherwise): the current list at once, then a new list each
/// time it changes. Sorted, so an unchanged set is never yielded twice.
pub fn follow(
    registry: &Registry,
    service: &str,
    filter: Filter,
) -> impl Stream<Item = Vec<FeedEndpoint>> + Send + 'static {
    struct Follow {
        registry: Registry,
        service: String,
        filter: Filter,
        index: Option<u64>,
        last: Option<Vec<FeedEndpoint>>,
    }
    let state = Follow {
        registry: registry.clone(),
        service: service.to_owned(),
        filter,
        index: None,
        last: None,
    };
    futures::stream::unfold(state, |mut s| async move {
        loop {
            let (index, instances) = s
                .registry
                .discover_blocking(&s.service, &s.filter, s.index, Duration::from_secs(3600))
                .await;
            s.index = Some(index);
            let list = endpoints(&instances);
            if s.last.as_ref() != Some(&list) {
                s.last = Some(list.clone());
                return Some((list, s));
            }
        }
    })
}
