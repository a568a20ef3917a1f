//! Accepting client connections: a connection cap per listener, TLS
//! handshakes bounded by the header read timeout, HTTP/1.1 and HTTP/2 on one
//! socket, and graceful draining on shutdown.

use crate::framing::{Framing, FramingGuard};
use crate::h1;
use crate::metrics::Metrics;
use crate::proxy::{self, ClientConn};
use crate::runtime::Runtime;
use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// Serves `socket` as listener number `index` until `stop` turns true, then
/// drains open connections for up to the deadline sent with it. `share` is
/// how many sockets (workers) serve the listener.
pub(crate) async fn serve(
    socket: TcpListener,
    index: usize,
    shared: Arc<ArcSwap<Runtime>>,
    metrics: Metrics,
    mut stop: watch::Receiver<Option<Duration>>,
    share: usize,
) {
    let name = shared.load().listeners[index].name.clone();
    // A listener served by several workers splits its connection cap.
    let max = shared.load().listeners[index]
        .limits
        .max_connections
        .div_ceil(share.max(1));
    let permits = Arc::new(Semaphore::new(max));
    let open = metrics.connections(&name);
    let graceful = GracefulShutdown::new();
    let mut tasks = JoinSet::new();
    let deadline = loop {
        while tasks.try_join_next().is_some() {}
        // Past the cap, connections wait in the kernel's backlog.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break Duration::ZERO },
            _ = stop.changed() => break stop.borrow().unwrap_or_default(),
        };
        let (tcp, peer) = tokio::select! {
            r = socket.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break stop.borrow().unwrap_or_default(),
        };
        let _ = tcp.set_nodelay(true);
        let rt = shared.load_full();
        let listener = &rt.listeners[index];
        let tls = listener.tls.clone();
        let builder = listener.builder.clone();
        let header_timeout = listener.limits.header_read_timeout;
        let conn = Arc::new(ClientConn::new(peer, tls.is_some()));
        // What the native HTTP/1.1 engine needs, on listeners it serves.
        let native = listener
            .native_h1
            .then(|| (shared.clone(), stop.clone(), conn.clone()));
        let shared = shared.clone();
        let framing = Arc::new(Framing::default());
        let judged = framing.clone();
        let svc = service_fn(move |req| {
            let rt = shared.load_full();
            let ambiguous = judged.next_is_ambiguous();
            let conn = conn.clone();
            async move {
                if ambiguous {
                    return Ok::<_, Infallible>(proxy::refuse_ambiguous(&req));
                }
                Ok::<_, Infallible>(proxy::handle(&rt.listeners[index], &conn, req).await)
            }
        });
        let open = open.clone();
        let watcher = graceful.watcher();
        drop(rt);
        tasks.spawn(async move {
            let _permit = permit;
            open.inc();
            match tls {
                None => {
                    // The native engine first, when it serves this listener;
                    // hyper from the first request it leaves, replaying what
                    // it read.
                    let handed = match native {
                        Some((shared, stop, conn)) => {
                            match h1::serve(tcp, &conn, index, shared, stop).await {
                                h1::Served::Done => None,
                                h1::Served::Hyper(tcp, read) => Some((tcp, read)),
                            }
                        }
                        None => Some((tcp, bytes::Bytes::new())),
                    };
                    if let Some((tcp, read)) = handed {
                        let io = TokioIo::new(FramingGuard::resume(tcp, read, framing));
                        let conn = builder.serve_connection_with_upgrades(io, svc);
                        if let Err(e) = watcher.watch(conn.into_owned()).await {
                            tracing::debug!(error = %e, "client connection ended with an error");
                        }
                    }
                }
                Some(acceptor) => match tokio::time::timeout(header_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let io = TokioIo::new(FramingGuard::new(stream, framing));
                        let conn = builder.serve_connection_with_upgrades(io, svc);
                        if let Err(e) = watcher.watch(conn.into_owned()).await {
                            tracing::debug!(error = %e, "client connection ended with an error");
                        }
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                },
            }
            open.dec();
        });
    };
    drop(socket);
    // Native-engine connections end themselves between requests once `stop`
    // is set; hyper's are told by `graceful`. Both are among `tasks`.
    let drained = async {
        graceful.shutdown().await;
        while tasks.join_next().await.is_some() {}
    };
    if tokio::time::timeout(deadline, drained).await.is_err() {
        tracing::warn!(listener = %name, "drain deadline passed; closing remaining connections");
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
}
