//! Listener workers: thread per core for a listener with `workers = N`.
//!
//! Each worker is a thread with tokio's single-threaded runtime and a socket
//! of its own bound with `SO_REUSEPORT`, so the kernel spreads new
//! connections over the workers and a connection lives on one thread from
//! accept to close — no work stealing, no cross-thread wake-ups, and upstream
//! connections that stay with the thread that opened them (see
//! `crate::h1::pool`). Health checks, the registry feed and reloads stay on
//! the node's shared runtime; the workers only read the compiled runtime.

use crate::listener;
use crate::metrics::Metrics;
use crate::runtime::Runtime;
use arc_swap::ArcSwap;
use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// The sockets of one listener, all bound to `addr`.
pub(crate) struct Bound {
    pub(crate) addr: SocketAddr,
    pub(crate) sockets: Vec<std::net::TcpListener>,
}

/// Binds `count` listening sockets to `addr` (with `SO_REUSEPORT` when
/// `reuse_port`); with port 0 the first picks the port and the rest share it.
pub(crate) fn bind(addr: SocketAddr, count: usize, reuse_port: bool) -> io::Result<Bound> {
    let mut bound = Bound {
        addr,
        sockets: Vec::with_capacity(count),
    };
    for _ in 0..count {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        if reuse_port {
            socket.set_reuse_port(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&bound.addr.into())?;
        socket.listen(1024)?;
        let listener: std::net::TcpListener = socket.into();
        bound.addr = listener.local_addr()?;
        bound.sockets.push(listener);
    }
    Ok(bound)
}

/// Which worker thread this is: 0 on threads that are not listener workers
/// (the node's shared runtime), so that pooled connections, which belong to
/// the runtime that opened them, are handed out on the same thread only.
pub(crate) fn current() -> u32 {
    WORKER.with(Cell::get)
}

thread_local! {
    static WORKER: Cell<u32> = const { Cell::new(0) };
}

static NEXT_WORKER: AtomicU32 = AtomicU32::new(1);

/// One worker thread, ready to start.
pub(crate) struct Worker {
    pub(crate) name: String,
    pub(crate) socket: std::net::TcpListener,
    pub(crate) index: usize,
    pub(crate) shared: Arc<ArcSwap<Runtime>>,
    pub(crate) metrics: Metrics,
    pub(crate) stop: watch::Receiver<Option<Duration>>,
    /// Workers serving the same listener.
    pub(crate) share: usize,
}

impl Worker {
    /// Starts the thread; the receiver hears when it has drained and ended.
    pub(crate) fn start(self) -> io::Result<oneshot::Receiver<()>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (done, finished) = oneshot::channel();
        std::thread::Builder::new().name(self.name).spawn(move || {
            WORKER.with(|w| w.set(NEXT_WORKER.fetch_add(1, Ordering::Relaxed)));
            runtime.block_on(async move {
                match tokio::net::TcpListener::from_std(self.socket) {
                    Ok(socket) => {
                        let serve = listener::serve(
                            socket,
                            self.index,
                            self.shared,
                            self.metrics,
                            self.stop,
                            self.share,
                        );
                        serve.await;
                    }
                    Err(e) => tracing::error!(error = %e, "listener worker cannot use its socket"),
                }
            });
            let _ = done.send(());
        })?;
        Ok(finished)
    }
}
