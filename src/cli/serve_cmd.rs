//! `thinpool serve`: hand the pool to the NBD frontend, with this CLI as the handler of
//! commands arriving on the control socket.

use super::size::parse_duration;
use crate::nbd::{self, ServeOptions};
use anyhow::{Context, Result};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Pool directory
    pub pool: PathBuf,
    /// Unix socket to listen on (default: POOL/nbd.sock); only a stale socket there is replaced
    #[arg(long, conflicts_with = "listen")]
    pub socket: Option<PathBuf>,
    /// TCP address to listen on, ADDR:PORT (loopback only unless --allow-remote with --tls
    /// require, or --allow-plaintext-remote)
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// Volume to export (repeatable; default: every volume)
    #[arg(long = "export", value_name = "VOL")]
    pub exports: Vec<String>,
    /// Export every volume read-only
    #[arg(long)]
    pub read_only: bool,
    /// Allow --listen on a non-loopback address (with --tls require)
    #[arg(long)]
    pub allow_remote: bool,
    /// Allow a non-loopback --listen without --tls require: anyone who can reach it reads
    /// and writes every exported volume in plain text
    #[arg(long)]
    pub allow_plaintext_remote: bool,
    /// TLS through NBD_OPT_STARTTLS on every listener: off, on (offered), require (no other
    /// option before it). Default: on with --tls-cert, else off
    #[arg(long, value_enum, value_name = "MODE")]
    pub tls: Option<nbd::TlsMode>,
    /// The server's X.509 certificate chain (PEM, its own certificate first)
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM)
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Clients must present a certificate signed by this CA (PEM)
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_ca: Option<PathBuf>,
    /// Commit new mappings at least this often (e.g. 1s, 500ms); overwrites in place are synced by FLUSH
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub commit_interval: Duration,
    /// Open the data file with O_DIRECT (like qemu-nbd --cache=none): the page cache is
    /// bypassed, so guests do not cache twice and the engine itself is measured
    #[arg(long)]
    pub direct: bool,
    /// Most NBD connections at once
    #[arg(long, default_value_t = crate::nbd::MAX_CONNECTIONS, value_name = "N",
          value_parser = clap::value_parser!(usize))]
    pub max_connections: usize,
    /// When the server is full, a connection idle this long is closed to admit a new one
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "TIME")]
    pub evict_idle: Duration,
    /// Log lines as text or as one JSON object per line (levels: RUST_LOG, -v, -q; default
    /// info: start, stop, one line per connection; -v adds one line per commit)
    #[arg(long, value_enum, default_value = "text", value_name = "FORMAT")]
    pub log_format: crate::logging::LogFormat,
    /// Log a warning when data or metadata use reaches this share of capacity (e.g. 80%)
    #[arg(long, value_parser = parse_percent, value_name = "PCT")]
    pub warn_at: Option<u8>,
    /// Grow the data capacity by --autoextend-by once its use reaches this share, or when a
    /// write finds no free block, while the filesystem has room (like LVM's
    /// thin_pool_autoextend_threshold)
    #[arg(long, value_parser = parse_percent, value_name = "PCT")]
    pub autoextend_at: Option<u8>,
    /// How much each autoextend adds, as a share of the current capacity
    #[arg(long, value_parser = parse_percent, value_name = "PCT", default_value = "20%",
          requires = "autoextend_at")]
    pub autoextend_by: u8,
}

/// `80%` or `80`: a whole percentage from 1 to 100.
fn parse_percent(s: &str) -> std::result::Result<u8, String> {
    let n = s.strip_suffix('%').unwrap_or(s);
    match n.parse::<u8>() {
        Ok(v) if (1..=100).contains(&v) => Ok(v),
        _ => Err(format!("'{s}' is not a percentage from 1% to 100%")),
    }
}

pub fn run(
    a: &ServeArgs,
    rewind: bool,
    engine: crate::io::Engine,
    _out: &mut dyn Write,
) -> Result<()> {
    let opts = ServeOptions {
        pool_dir: a.pool.clone(),
        socket: a.socket.clone(),
        listen: a.listen.clone(),
        exports: a.exports.clone(),
        read_only: a.read_only,
        allow_remote: a.allow_remote,
        allow_plaintext_remote: a.allow_plaintext_remote,
        tls_mode: a.tls.unwrap_or(if a.tls_cert.is_some() {
            nbd::TlsMode::On
        } else {
            nbd::TlsMode::Off
        }),
        tls: match (&a.tls_cert, &a.tls_key) {
            (Some(cert), Some(key)) => Some(nbd::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: a.tls_ca.clone(),
            }),
            _ => None,
        },
        commit_interval: a.commit_interval,
        rewind,
        engine,
        direct: a.direct,
        max_connections: a.max_connections,
        evict_idle: a.evict_idle,
        low_space: crate::pool::LowSpace {
            warn_at: a.warn_at,
            extend_at: a.autoextend_at,
            extend_by: a.autoextend_by,
        },
    };
    nbd::serve(opts, Box::new(super::run_in_pool))
        .with_context(|| format!("cannot serve pool {}", a.pool.display()))
}
