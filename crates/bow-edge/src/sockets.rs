//! Listening sockets that outlive the edge or listener serving them.
//!
//! An edge (or a [`crate::ServiceListener`]) given a [`Sockets`] takes its listening socket
//! from there: one handed over by an earlier process at an upgrade ([`Sockets::adopt`]), or one
//! it binds, which is kept there too. The set keeps its own copy of every socket, so a
//! listener that is restarted (new settings) or replaced by another process never closes the
//! socket in between: connections arriving meanwhile wait in its accept queue instead of being
//! refused. [`Sockets::retain`] closes the ones no longer wanted, and [`Sockets::all`] lists them
//! for the next process.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;

use crate::error::EdgeError;

/// A shared set of listening TCP sockets, by the address they were bound to.
#[derive(Clone, Default, Debug)]
pub struct Sockets {
    kept: Arc<Mutex<HashMap<SocketAddr, std::net::TcpListener>>>,
}

impl Sockets {
    /// Keeps a listening socket handed over by another process, under its local address.
    pub fn adopt(&self, listener: std::net::TcpListener) -> std::io::Result<SocketAddr> {
        let addr = listener.local_addr()?;
        self.locked().insert(addr, listener);
        Ok(addr)
    }

    /// A listener on `addr`: the kept socket when there is one, else a newly bound one (kept
    /// from now on). An address with port 0 is bound afresh and not kept.
    pub(crate) fn listener(&self, addr: SocketAddr) -> Result<TcpListener, EdgeError> {
        if addr.port() == 0 {
            return crate::bind(addr);
        }
        let mut kept = self.locked();
        let socket = match kept.get(&addr) {
            Some(socket) => socket,
            None => {
                let bound = crate::bind(addr)?
                    .into_std()
                    .map_err(|source| EdgeError::Bind { addr, source })?;
                kept.entry(addr).or_insert(bound)
            }
        };
        let copy = socket
            .try_clone()
            .and_then(|copy| copy.set_nonblocking(true).map(|()| copy))
            .map_err(|source| EdgeError::Bind { addr, source })?;
        TcpListener::from_std(copy).map_err(|source| EdgeError::Bind { addr, source })
    }

    /// Closes the kept sockets whose address `keep` refuses (a listener that is gone for good
    /// still holds its own copy until it shuts down).
    pub fn retain(&self, keep: impl Fn(&SocketAddr) -> bool) {
        self.locked().retain(|addr, _| keep(addr));
    }

    /// Every kept socket: its address and descriptor (still owned by the set), to hand over.
    pub fn all(&self) -> Vec<(SocketAddr, RawFd)> {
        self.locked()
            .iter()
            .map(|(addr, socket)| (*addr, socket.as_raw_fd()))
            .collect()
    }

    fn locked(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, std::net::TcpListener>> {
        self.kept
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_kept_socket_outlives_its_listener_and_is_reused() {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let sockets = Sockets::default();
        let first = sockets.listener(addr).unwrap();
        drop(first);
        // Nobody accepts now, yet the socket still listens: a client's connect succeeds.
        let client = std::net::TcpStream::connect(addr).unwrap();
        let second = sockets.listener(addr).unwrap();
        let (_accepted, from) = second.accept().await.unwrap();
        assert_eq!(from, client.local_addr().unwrap());
        assert_eq!(sockets.all().len(), 1);
        drop(second);
        sockets.retain(|_| false);
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "closed once not kept"
        );
    }
}
