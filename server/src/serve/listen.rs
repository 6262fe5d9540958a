//! Accepting connections with bounds a client cannot hold open: at most `max_connections` at
//! once (the next waits in the kernel's backlog until one closes) and `max_connections_per_ip`
//! from one address (more are answered 429 and closed), request headers read within
//! a deadline (which also closes an idle keep-alive connection), and a request body that stalls
//! between reads is dropped. axum's own `serve` sets none of these, so the accept loop is
//! hyper's, with the same router.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// How many connections and how long each may wait on its client.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionLimits {
    /// Most connections open at once; more wait until one closes.
    #[arg(long, default_value_t = 256)]
    pub max_connections: usize,
    /// Most connections open at once from one IP address; more are refused with 429. A
    /// classroom behind one NAT address shares it (a tab holds up to 6).
    #[arg(long, default_value_t = 128)]
    pub max_connections_per_ip: usize,
    /// Seconds a client has to send a request's headers (and that an idle keep-alive
    /// connection stays open).
    #[arg(long, default_value_t = 10)]
    pub header_timeout_s: u64,
}

/// How long running connections (event streams, downloads) get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown` resolves, then lets open connections finish
/// their current response for [`SHUTDOWN_GRACE`].
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let per_ip = Arc::new(PerAddress::new(limits.max_connections_per_ip.max(1)));
    let header_timeout = Duration::from_secs(limits.header_timeout_s.max(1));
    let graceful = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = accept(&listener, &permits) => accepted,
        };
        let (stream, peer, permit) = accepted;
        let Some(slot) = per_ip.take(peer) else {
            tokio::spawn(refuse(stream, peer));
            continue;
        };
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(header_timeout);
        let connection =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("connection closed: {e}");
            }
            drop((slot, permit));
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {},
        () = tokio::time::sleep(SHUTDOWN_GRACE) => {
            tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; closing them");
        }
    }
}

/// Open connections by client address.
struct PerAddress {
    most: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One open connection of an address, counted until dropped.
struct Slot {
    of: Arc<PerAddress>,
    ip: IpAddr,
}

impl PerAddress {
    fn new(most: usize) -> PerAddress {
        PerAddress {
            most,
            open: Mutex::new(HashMap::new()),
        }
    }

    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(ip).or_default();
        if *n >= self.most {
            return None;
        }
        *n += 1;
        Some(Slot {
            of: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.of.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Answers a connection past its address's share with 429 and closes it.
async fn refuse(mut stream: tokio::net::TcpStream, ip: IpAddr) {
    tracing::warn!("{ip} has too many connections open (serve --max-connections-per-ip)");
    let answer = "HTTP/1.1 429 Too Many Requests\r\nconnection: close\r\n\
                  content-type: text/plain\r\ncontent-length: 60\r\n\r\n\
                  too many connections from this address; close some and retry";
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(answer.as_bytes())).await;
    let _ = stream.shutdown().await;
}

/// The next connection and its client's address, once fewer than the most are open.
async fn accept(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
) -> (
    tokio::net::TcpStream,
    IpAddr,
    tokio::sync::OwnedSemaphorePermit,
) {
    let permit = permits
        .clone()
        .acquire_owned()
        .await
        .expect("the connection semaphore is never closed");
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => return (stream, peer.ip(), permit),
            // Out of file descriptors or a connection reset before it was accepted: the
            // listener itself is fine, so wait a moment rather than spin or stop.
            Err(e) => {
                tracing::warn!("accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
