//! The native engine's connections to upstream endpoints: each endpoint
//! keeps its idle keep-alive connections, most recently used first, so a
//! request checks one out without a channel, a task or a hash lookup.

use bytes::BytesMut;
use std::io;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A connection to an upstream endpoint and its read buffer.
pub(crate) struct UpstreamConn {
    pub(crate) io: TcpStream,
    pub(crate) buf: BytesMut,
    /// Where the fields of the last response head lie in `buf`.
    pub(crate) fields: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>,
    /// It served a request before, so the endpoint may have closed it
    /// meanwhile; a request that finds it dead may be sent again.
    pub(crate) reused: bool,
}

/// Idle connections of one endpoint, each with the worker thread whose
/// runtime it is registered with (`crate::workers::current`).
#[derive(Default)]
pub(crate) struct IdleConns {
    conns: parking_lot::Mutex<Vec<Idle>>,
}

struct Idle {
    conn: UpstreamConn,
    since: Instant,
    worker: u32,
}

impl std::fmt::Debug for IdleConns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleConns")
            .field("idle", &self.conns.lock().len())
            .finish()
    }
}

/// The pool limits of an upstream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PoolLimits {
    pub(crate) max_idle: usize,
    pub(crate) idle_timeout: Duration,
    pub(crate) connect_timeout: Duration,
}

const READ_BUF: usize = 8 * 1024;

impl IdleConns {
    /// An idle connection that is still open, or a new one to `address`.
    pub(crate) async fn checkout(
        &self,
        address: &str,
        limits: PoolLimits,
    ) -> io::Result<UpstreamConn> {
        if let Some(conn) = self.take_live(limits.idle_timeout) {
            return Ok(conn);
        }
        connect(address, limits.connect_timeout).await
    }

    fn take_live(&self, idle_timeout: Duration) -> Option<UpstreamConn> {
        let worker = crate::workers::current();
        loop {
            let idle = {
                let mut conns = self.conns.lock();
                let at = conns.iter().rposition(|i| i.worker == worker)?;
                conns.remove(at)
            };
            let mut conn = idle.conn;
            if idle.since.elapsed() < idle_timeout && still_open(&conn.io) {
                conn.reused = true;
                return Some(conn);
            }
        }
    }

    /// Keeps `conn` for the next request, unless the pool is full.
    pub(crate) fn release(&self, mut conn: UpstreamConn, limits: PoolLimits) {
        conn.buf.clear();
        let mut idle = self.conns.lock();
        if idle.len() < limits.max_idle {
            idle.push(Idle {
                conn,
                since: Instant::now(),
                worker: crate::workers::current(),
            });
        }
    }
}

/// A new connection to `address`, bounded by `timeout`.
pub(crate) async fn connect(address: &str, timeout: Duration) -> io::Result<UpstreamConn> {
    let io = tokio::time::timeout(timeout, TcpStream::connect(address))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    io.set_nodelay(true)?;
    Ok(UpstreamConn {
        io,
        buf: BytesMut::with_capacity(READ_BUF),
        fields: Vec::new(),
        reused: false,
    })
}

/// Whether an idle connection is still open: nothing arrived on it since its
/// last response (an endpoint that closes it sends a FIN, which makes it
/// readable). Readiness comes from the reactor, so the usual answer costs no
/// system call; only a connection the reactor saw become readable is read.
fn still_open(io: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    match io.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            let mut probe = [0u8; 1];
            matches!(io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    const LIMITS: PoolLimits = PoolLimits {
        max_idle: 2,
        idle_timeout: Duration::from_secs(60),
        connect_timeout: Duration::from_secs(2),
    };

    #[tokio::test]
    async fn a_released_connection_is_reused_until_the_endpoint_closes_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let pool = IdleConns::default();
        let conn = pool.checkout(&addr, LIMITS).await.unwrap();
        assert!(!conn.reused);
        let (mut server_side, _) = listener.accept().await.unwrap();
        pool.release(conn, LIMITS);
        let conn = pool.checkout(&addr, LIMITS).await.unwrap();
        assert!(conn.reused, "the idle connection is handed out again");
        pool.release(conn, LIMITS);
        // The endpoint closes it while it idles: the next checkout connects anew.
        server_side.shutdown().await.unwrap();
        drop(server_side);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let conn = pool.checkout(&addr, LIMITS).await.unwrap();
        assert!(!conn.reused, "a closed idle connection is not handed out");
    }

    #[tokio::test]
    async fn the_pool_keeps_at_most_max_idle() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let pool = IdleConns::default();
        let mut conns = Vec::new();
        for _ in 0..4 {
            conns.push(pool.checkout(&addr, LIMITS).await.unwrap());
        }
        for c in conns {
            pool.release(c, LIMITS);
        }
        assert_eq!(pool.conns.lock().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn connections_idle_past_the_timeout_are_dropped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let pool = IdleConns::default();
        let limits = PoolLimits {
            idle_timeout: Duration::from_secs(5),
            ..LIMITS
        };
        let conn = pool.checkout(&addr, limits).await.unwrap();
        pool.release(conn, limits);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(!pool.checkout(&addr, limits).await.unwrap().reused);
    }
}
