//! Group commit on PostgreSQL.
//!
//! The event store keeps positions gap-free by holding a counter row lock
//! until commit, so its appends commit one at a time; PostgreSQL's own group
//! commit cannot help transactions that wait on each other. As on SQLite,
//! writes therefore queue to one writer task, which takes everything queued
//! into one transaction on one pooled connection, runs each write in its own
//! `SAVEPOINT` (a failing write is rolled back alone), commits once, and only
//! then answers each write: one lock hold and one fsync cover the group.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use deadpool_postgres::Pool;
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::{mpsc, oneshot};

use crate::tx::{Tx, TxBody, TxConn};
use crate::{StoreError, MAX_GROUP};

pub(crate) trait PgJob: Send {
    fn prefix(&self) -> Arc<str>;
    /// Runs the body inside the current savepoint; resolves to true on success.
    fn run<'a>(&'a mut self, tx: &'a Tx<'a>) -> BoxFuture<'a, bool>;
    fn finish(self: Box<Self>, commit: Option<&StoreError>);
}

pub(crate) struct PgWriteJob<F, T, E> {
    pub(crate) prefix: Arc<str>,
    pub(crate) body: Option<F>,
    pub(crate) out: Option<Result<T, E>>,
    pub(crate) reply: oneshot::Sender<Result<T, E>>,
}

impl<F, T, E> PgJob for PgWriteJob<F, T, E>
where
    F: TxBody<T, E>,
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
{
    fn prefix(&self) -> Arc<str> {
        self.prefix.clone()
    }

    fn run<'a>(&'a mut self, tx: &'a Tx<'a>) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            let Some(body) = self.body.take() else {
                return false;
            };
            let result = AssertUnwindSafe(body(tx))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| Err(E::from(StoreError::Panicked)));
            let ok = result.is_ok();
            self.out = Some(result);
            ok
        })
    }

    fn finish(self: Box<Self>, commit: Option<&StoreError>) {
        let result = match (self.out, commit) {
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(_)), Some(err)) => Err(E::from(StoreError::CommitFailed(err.to_string()))),
            (Some(Ok(v)), None) => Ok(v),
            (None, err) => Err(E::from(StoreError::CommitFailed(
                err.map_or_else(|| "the write did not run".into(), ToString::to_string),
            ))),
        };
        let _ = self.reply.send(result);
    }
}

pub(crate) async fn writer(
    pool: Pool,
    mut rx: mpsc::UnboundedReceiver<Box<dyn PgJob>>,
    counters: Arc<crate::sqlite::Counters>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let mut client = match pool.get().await {
            Ok(c) => c,
            Err(e) => {
                let err = StoreError::from(e);
                group.into_iter().for_each(|j| j.finish(Some(&err)));
                continue;
            }
        };
        let tx = match client.transaction().await {
            Ok(tx) => tx,
            Err(e) => {
                let err = StoreError::from(e);
                group.into_iter().for_each(|j| j.finish(Some(&err)));
                continue;
            }
        };
        let mut broken: Option<StoreError> = None;
        for job in group.iter_mut() {
            if let Err(e) = tx.batch_execute("SAVEPOINT job").await {
                broken = Some(e.into());
                break;
            }
            let prefix = job.prefix();
            let ok = {
                let handle = Tx {
                    prefix: &prefix,
                    conn: TxConn::Postgres(&tx),
                };
                job.run(&handle).await
            };
            let end = if ok {
                "RELEASE job"
            } else {
                "ROLLBACK TO job; RELEASE job"
            };
            if let Err(e) = tx.batch_execute(end).await {
                broken = Some(e.into());
                break;
            }
        }
        let commit = match broken {
            Some(e) => {
                let _ = tx.rollback().await;
                Err(e)
            }
            None => tx.commit().await.map_err(StoreError::from),
        };
        let err = commit.err();
        if err.is_none() {
            counters.commits.fetch_add(1, Relaxed);
            counters.writes.fetch_add(group.len() as u64, Relaxed);
        }
        for job in group {
            job.finish(err.as_ref());
        }
    }
}
