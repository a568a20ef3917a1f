//! The registry a node uses: its own embedded one, or another node's over
//! the control API (`registry.remote`). Gateway upstreams follow services
//! through it, and `trellis run` registers its app with it; neither needs
//! to know which kind it is.

use std::time::Duration;

use anyhow::Context as _;
use futures::stream::BoxStream;
use futures::StreamExt as _;
use trellis_discovery::{Filter, Instance, Registration, Registry, Status, INDEX_HEADER};

/// Where services are registered and found.
#[derive(Clone, Debug)]
pub enum Directory {
    /// This node's own registry.
    Local(Registry),
    /// Another node's registry, over its REST API.
    Remote(RemoteRegistry),
}

impl Directory {
    /// The served endpoints of `service`: the current list, then each change.
    pub fn follow(&self, service: &str) -> BoxStream<'static, Vec<(String, u32)>> {
        let lists = match self {
            Directory::Local(r) => trellis_discovery::follow(r, service, Filter::default()).boxed(),
            Directory::Remote(r) => r.follow(service),
        };
        lists
            .map(|l| l.into_iter().map(Into::into).collect())
            .boxed()
    }

    /// Registers (or replaces) one instance.
    pub async fn register(
        &self,
        service: &str,
        id: &str,
        registration: Registration,
    ) -> anyhow::Result<()> {
        match self {
            Directory::Local(r) => {
                r.register(service, id, registration).await?;
                Ok(())
            }
            Directory::Remote(r) => r.register(service, id, &registration).await,
        }
    }

    /// Renews a TTL instance and reports its status.
    pub async fn heartbeat(&self, service: &str, id: &str, status: Status) -> anyhow::Result<()> {
        match self {
            Directory::Local(r) => {
                r.renew(service, id, status, None).await?;
                Ok(())
            }
            Directory::Remote(r) => r.heartbeat(service, id, status).await,
        }
    }

    /// Removes an instance; removing one that is not there is not an error.
    pub async fn deregister(&self, service: &str, id: &str) -> anyhow::Result<()> {
        match self {
            Directory::Local(r) => match r.deregister(service, id).await {
                Ok(_) | Err(trellis_discovery::RegistryError::NotFound { .. }) => Ok(()),
                Err(e) => Err(e.into()),
            },
            Directory::Remote(r) => r.deregister(service, id).await,
        }
    }
}

impl trellis_gateway::ServiceResolver for Directory {
    fn follow(&self, service: &str) -> BoxStream<'static, Vec<(String, u32)>> {
        Directory::follow(self, service)
    }
}

/// Another node's registry, reached over `/v1/registry` on its control API.
#[derive(Clone, Debug)]
pub struct RemoteRegistry {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// How long one blocking query waits for a change before asking again.
const WATCH_WAIT: Duration = Duration::from_secs(60);
/// Backoff between failed watch requests, doubling up to the cap.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_CAP: Duration = Duration::from_secs(5);

impl RemoteRegistry {
    /// A client for the node whose control API is at `url` (`http://host:port`).
    pub fn new(url: &str, token: Option<String>) -> anyhow::Result<RemoteRegistry> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(WATCH_WAIT + Duration::from_secs(15))
            .build()
            .context("cannot build the registry client")?;
        Ok(RemoteRegistry {
            base: format!("{}/v1/registry", url.trim_end_matches('/')),
            token,
            http,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// Sends `r`; an answer other than 2xx (or, with `absent_ok`, 404) is an error.
    async fn send(
        &self,
        r: reqwest::RequestBuilder,
        what: &str,
        absent_ok: bool,
    ) -> anyhow::Result<reqwest::Response> {
        let resp = r
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .with_context(|| format!("{what}: the registry at {} is unreachable", self.base))?;
        let status = resp.status();
        if status.is_success() || (absent_ok && status == reqwest::StatusCode::NOT_FOUND) {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        anyhow::bail!("{what}: the registry answered {status}: {body}")
    }

    async fn register(
        &self,
        service: &str,
        id: &str,
        registration: &Registration,
    ) -> anyhow::Result<()> {
        let path = format!("/services/{service}/instances/{id}");
        let r = self.request(reqwest::Method::PUT, &path).json(registration);
        self.send(r, "register", false).await.map(drop)
    }

    async fn heartbeat(&self, service: &str, id: &str, status: Status) -> anyhow::Result<()> {
        let path = format!(
            "/services/{service}/instances/{id}/heartbeat?status={}",
            status.as_str()
        );
        let r = self.request(reqwest::Method::PUT, &path);
        self.send(r, "heartbeat", false).await.map(drop)
    }

    async fn deregister(&self, service: &str, id: &str) -> anyhow::Result<()> {
        let path = format!("/services/{service}/instances/{id}");
        let r = self.request(reqwest::Method::DELETE, &path);
        self.send(r, "deregister", true).await.map(drop)
    }

    /// One blocking query: the index and served instances after `index`.
    async fn discover(
        &self,
        service: &str,
        index: Option<u64>,
    ) -> anyhow::Result<(u64, Vec<Instance>)> {
        let mut path = format!("/services/{service}?wait={}s", WATCH_WAIT.as_secs());
        if let Some(i) = index {
            path.push_str(&format!("&index={i}"));
        }
        let resp = self
            .request(reqwest::Method::GET, &path)
            .send()
            .await
            .with_context(|| format!("the registry at {} is unreachable", self.base))?;
        let status = resp.status();
        if !status.is_success() {
            anyhow::bail!("the registry answered {status} for service {service:?}");
        }
        let index = resp
            .headers()
            .get(INDEX_HEADER)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0);
        #[derive(serde::Deserialize)]
        struct Body {
            instances: Vec<Instance>,
        }
        let body: Body = resp.json().await.context("unreadable discovery answer")?;
        Ok((index, body.instances))
    }

    /// The served endpoints of `service` by blocking queries: a new list as
    /// soon as the remote registry changes. While it is unreachable the last
    /// list stands (stale beats empty) and the query is retried with backoff.
    fn follow(&self, service: &str) -> BoxStream<'static, Vec<trellis_discovery::FeedEndpoint>> {
        struct Follow {
            remote: RemoteRegistry,
            service: String,
            index: Option<u64>,
            last: Option<Vec<trellis_discovery::FeedEndpoint>>,
            backoff: Duration,
        }
        let state = Follow {
            remote: self.clone(),
            service: service.to_owned(),
            index: None,
            last: None,
            backoff: RETRY_FIRST,
        };
        futures::stream::unfold(state, |mut s| async move {
            loop {
                match s.remote.discover(&s.service, s.index).await {
                    Ok((index, instances)) => {
                        s.backoff = RETRY_FIRST;
                        // An index that went backwards means the registry restarted.
                        s.index = Some(index).filter(|i| s.index.is_none_or(|old| *i >= old));
                        let list = trellis_discovery::endpoints(&instances);
                        if s.last.as_ref() != Some(&list) {
                            s.last = Some(list.clone());
                            return Some((list, s));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(service = %s.service, error = %format!("{e:#}"), "registry watch failed; retrying");
                        tokio::time::sleep(s.backoff).await;
                        s.backoff = (s.backoff * 2).min(RETRY_CAP);
                        s.index = None;
                    }
                }
            }
        })
        .boxed()
    }
}
