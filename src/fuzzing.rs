//! Entry points for the fuzz targets (`tests/fuzz.rs` and the cargo-fuzz crate in `tools/fuzz/`):
//! in-process access to the NBD server's negotiation and request execution, which are
//! otherwise reachable only through a listening socket. Not a stable API.

use crate::nbd::command;
use crate::nbd::handshake::{self, Session};
use crate::nbd::proto::{Request, EXT_REQUEST_SIZE, REQUEST_SIZE};
use crate::nbd::server;
use crate::nbd::shared::{Shared, Stream};
use crate::pool::{Pool, SharedPool};
use std::io::{self, Read, Write};
use std::sync::Arc;

/// What a negotiation attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub export: String,
    pub size: u64,
    pub read_only: bool,
    pub structured: bool,
    pub allocation_context: bool,
}

/// An NBD server's shared state around one pool, with no listener.
pub struct NbdServer {
    shared: Arc<Shared>,
}

impl NbdServer {
    /// Serve `pool` (every volume is an export); `read_only` as `serve --read-only`.
    pub fn new(pool: Pool, read_only: bool) -> NbdServer {
        NbdServer {
            shared: Arc::new(Shared::detached(pool, read_only)),
        }
    }

    pub fn pool(&self) -> &SharedPool {
        self.shared.pool()
    }

    /// Run the option negotiation over `s` (client bytes in, server bytes out).
    pub fn negotiate<S: Read + Write>(&self, s: &mut S) -> io::Result<Option<Attached>> {
        // This server has no TLS configured: STARTTLS is refused, `start` never called.
        let mut start = |_: &mut S, _: &crate::nbd::tls::Tls| -> io::Result<()> {
            Err(io::Error::from(io::ErrorKind::Unsupported))
        };
        Ok(
            handshake::negotiate(s, &self.shared, &mut start)?.map(|sess| Attached {
                export: sess.export.name.clone(),
                size: sess.export.size,
                read_only: sess.export.read_only,
                structured: sess.structured,
                allocation_context: sess.allocation_context,
            }),
        )
    }

    /// Validate and execute one transmission request as an attached connection would;
    /// returns the complete reply. `None` when `export` is unknown.
    pub fn execute(
        &self,
        export: &str,
        structured: bool,
        allocation_context: bool,
        header: &[u8; REQUEST_SIZE],
        payload: &[u8],
    ) -> Option<Vec<u8>> {
        self.run(
            export,
            structured,
            false,
            allocation_context,
            Request::decode(header),
            payload,
        )
    }

    /// [`NbdServer::execute`] on a session that negotiated extended headers (32-byte
    /// request header; every reply an extended chunk).
    pub fn execute_ext(
        &self,
        export: &str,
        allocation_context: bool,
        header: &[u8; EXT_REQUEST_SIZE],
        payload: &[u8],
    ) -> Option<Vec<u8>> {
        let req = Request::decode_ext(header);
        self.run(export, true, true, allocation_context, req, payload)
    }

    /// One request on a session negotiated as given.
    fn run(
        &self,
        export: &str,
        structured: bool,
        extended: bool,
        allocation_context: bool,
        req: Request,
        payload: &[u8],
    ) -> Option<Vec<u8>> {
        let export = self.shared.find_export(export)?;
        let sess = Session {
            export,
            structured,
            extended,
            allocation_context,
            changed: Vec::new(),
        };
        Some(command::execute(&self.shared, &sess, &req, payload))
    }

    /// One whole connection (negotiation, then transmission) over a socket pair: `client`
    /// is everything the client sends before it closes its side; returns everything the
    /// server sent until it closed the connection.
    pub fn connection(&self, client: &[u8]) -> io::Result<Vec<u8>> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        let shared = self.shared.clone();
        let srv = std::thread::spawn(move || server::connection(&shared, Stream::Unix(theirs)));
        let mut w = ours.try_clone()?;
        let input = client.to_vec();
        let writer = std::thread::spawn(move || {
            // The server may hang up before reading everything: that is its right.
            let _ = w.write_all(&input);
            let _ = w.shutdown(std::net::Shutdown::Write);
        });
        let mut out = Vec::new();
        let mut r = &ours;
        let res = r.read_to_end(&mut out);
        let _ = writer.join();
        srv.join()
            .map_err(|_| io::Error::other("the connection thread panicked"))?;
        match res {
            // A server that hangs up on unread client bytes resets the connection: the
            // bytes it sent before are in `out`.
            Err(e) if e.kind() != io::ErrorKind::ConnectionReset => Err(e),
            _ => Ok(out),
        }
    }
}
