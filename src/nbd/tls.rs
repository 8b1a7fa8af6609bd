//! TLS for NBD (`NBD_OPT_STARTTLS`, X.509 through rustls; docs/nbd.md, TLS).
//!
//! After the server acknowledges STARTTLS, the connection's socket is handed to a pump: two
//! threads that own one rustls `ServerConnection` between them (behind a mutex) and carry
//! plaintext to and from one end of a socket pair. The rest of the server (option haggling
//! resumed, then the transmission's reader, workers and writer) uses the other end of the
//! pair as it would a plain socket, so none of it knows about TLS.
//!
//! - Inbound: socket → `read_tls` → `process_new_packets` → plaintext → the pair. Handshake
//!   and alert records rustls produces are written to the socket under the same lock, so
//!   records leave in the order rustls made them.
//! - Outbound: the pair → `writer()` → `write_tls` → socket, a bounded piece at a time.
//! - Either side ending (EOF, an error, a bad handshake) shuts both the socket and the pair
//!   down, which ends the other pump thread and the connection; other connections are not
//!   involved. Memory per connection: two `PIECE` buffers plus rustls's own (bounded) ones.

use super::shared::Stream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// When a client must use TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsMode {
    /// No TLS: STARTTLS is refused (`NBD_REP_ERR_POLICY`).
    Off,
    /// TLS offered: a client may use STARTTLS or stay in plain text.
    On,
    /// TLS required: every option but STARTTLS and ABORT gets `NBD_REP_ERR_TLS_REQD`
    /// until the client has started TLS.
    Require,
}

/// Where the server's certificates come from (`serve --tls-cert/--tls-key/--tls-ca`).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server's certificate chain (PEM), its own certificate first.
    pub cert: PathBuf,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When given, clients must present a certificate this CA (PEM) signed.
    pub ca: Option<PathBuf>,
}

/// A loaded TLS policy: the mode and the rustls configuration built from the files.
#[derive(Clone)]
pub struct Tls {
    pub mode: TlsMode,
    config: Arc<ServerConfig>,
    client_certs: bool,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("mode", &self.mode)
            .field("client_certs", &self.client_certs)
            .finish()
    }
}

fn bad(path: &Path, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{}: {what}", path.display()),
    )
}

fn certs(path: &Path) -> io::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(path, format!("cannot read certificates: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(bad(path, "holds no certificate (PEM \"CERTIFICATE\")"));
    }
    Ok(certs)
}

impl Tls {
    /// Load the certificates and key; every problem is an error naming its file.
    pub fn load(mode: TlsMode, files: &TlsFiles) -> io::Result<Tls> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = certs(&files.cert)?;
        let key = PrivateKeyDer::from_pem_file(&files.key)
            .map_err(|e| bad(&files.key, format!("no usable private key: {e}")))?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?;
        let builder = match &files.ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in certs(ca)? {
                    roots
                        .add(c)
                        .map_err(|e| bad(ca, format!("not a usable CA certificate: {e}")))?;
                }
                let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| bad(ca, e))?;
                builder.with_client_cert_verifier(v)
            }
        };
        let config = builder.with_single_cert(chain, key).map_err(|e| {
            bad(
                &files.key,
                format!("does not go with {}: {e}", files.cert.display()),
            )
        })?;
        Ok(Tls {
            mode,
            config: Arc::new(config),
            client_certs: files.ca.is_some(),
        })
    }

    /// Whether clients must present a certificate.
    pub fn client_certs(&self) -> bool {
        self.client_certs
    }

    /// Start TLS on `s` (just after the STARTTLS acknowledgement): `s` becomes the plaintext
    /// end of a pump around the socket (see the module header).
    pub fn start(&self, s: &mut Stream) -> io::Result<()> {
        let conn = ServerConnection::new(self.config.clone()).map_err(io::Error::other)?;
        let socket = s.try_clone()?;
        let (ours, theirs) = UnixStream::pair()?;
        let pump = Arc::new(Pump {
            inner: Mutex::new(Inner {
                conn,
                socket: socket.try_clone()?,
            }),
            shut: socket.try_clone()?,
        });
        let inbound = {
            let (p, mut rx, local) = (pump.clone(), socket.try_clone()?, ours.try_clone()?);
            move || {
                if let Err(e) = p.inbound(&mut rx, &local) {
                    tracing::info!("TLS connection ended: {e}");
                }
                p.close(&local);
            }
        };
        let outbound = {
            let (p, local) = (pump, ours);
            move || {
                if let Err(e) = p.outbound(&local) {
                    tracing::debug!("TLS send ended: {e}");
                }
                p.close(&local);
            }
        };
        std::thread::Builder::new()
            .name("nbd-tls-in".into())
            .spawn(inbound)?;
        if let Err(e) = std::thread::Builder::new()
            .name("nbd-tls-out".into())
            .spawn(outbound)
        {
            // The inbound side ends when the socket is shut down.
            socket.shutdown(Shutdown::Both);
            return Err(e);
        }
        *s = Stream::Tls(Box::new(TlsEnd {
            local: theirs,
            socket,
        }));
        Ok(())
    }
}

/// The plaintext end of a TLS connection, as the server's `Stream` sees it.
pub struct TlsEnd {
    /// This end of the socket pair (reads and writes go here).
    pub(super) local: UnixStream,
    /// The network socket under TLS (for its peer's address, shutdown and timeouts).
    pub(super) socket: Stream,
}

/// Plaintext moved per step (each way).
const PIECE: usize = 64 << 10;

struct Pump {
    inner: Mutex<Inner>,
    /// The socket again, to shut it down without the lock.
    shut: Stream,
}

/// The TLS state and the socket its records are written to, under one lock so records
/// leave in the order rustls made them.
struct Inner {
    conn: ServerConnection,
    socket: Stream,
}

impl Inner {
    /// Write every record rustls has queued to the socket.
    fn send(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            self.conn.write_tls(&mut self.socket)?;
        }
        Ok(())
    }
}

impl Pump {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn inbound(&self, rx: &mut Stream, local: &UnixStream) -> io::Result<()> {
        let mut buf = vec![0u8; PIECE];
        let mut plain = Vec::with_capacity(PIECE);
        loop {
            let n = match rx.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            {
                let mut g = self.lock();
                let mut rd = &buf[..n];
                while !rd.is_empty() {
                    g.conn.read_tls(&mut rd)?;
                    let state = g.conn.process_new_packets();
                    // A bad record or handshake: rustls queued an alert; send it and end.
                    if let Err(e) = state {
                        let _ = g.send();
                        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                    }
                    loop {
                        let at = plain.len();
                        plain.resize(at + PIECE, 0);
                        match g.conn.reader().read(&mut plain[at..]) {
                            Ok(0) => {
                                // close_notify: the client is done sending.
                                plain.truncate(at);
                                break;
                            }
                            Ok(k) => plain.truncate(at + k),
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                plain.truncate(at);
                                break;
                            }
                            Err(e) => return Err(e),
                        }
                    }
                }
                g.send()?;
            }
            let mut w = local;
            w.write_all(&plain)?;
            plain.clear();
            if plain.capacity() > 4 * PIECE {
                plain.shrink_to(PIECE);
            }
        }
    }

    fn outbound(&self, local: &UnixStream) -> io::Result<()> {
        let mut buf = vec![0u8; PIECE];
        let mut r = local;
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => {
                    let mut g = self.lock();
                    g.conn.send_close_notify();
                    return g.send();
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let mut g = self.lock();
            let mut left = &buf[..n];
            while !left.is_empty() {
                let k = g.conn.writer().write(left)?;
                if k == 0 {
                    // Only before the handshake ends, which no reply can precede: the
                    // server answers options, and the client's first one follows it.
                    return Err(io::Error::other("TLS: plaintext before the handshake"));
                }
                left = &left[k..];
                // Each piece leaves before the next is taken: rustls buffers little.
                g.send()?;
            }
        }
    }

    /// End both sides: the pair (the server's reader and writer see EOF) and the socket
    /// (the other pump thread's read returns).
    fn close(&self, local: &UnixStream) {
        let _ = local.shutdown(Shutdown::Both);
        self.shut.shutdown(Shutdown::Both);
    }
}
