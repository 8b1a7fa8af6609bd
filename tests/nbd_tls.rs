//! TLS (NBD_OPT_STARTTLS, issue 14 item 2): the server's option rules byte by byte with a
//! raw client (plain, and over a rustls client session), real clients (nbdinfo, qemu-img,
//! fio) with certificates made here by `openssl`, and the refusals: no CA, no client
//! certificate, plaintext against `--tls require`, a non-loopback listener in plain text.

#[path = "common/nbd.rs"]
mod nbd_util;
#[path = "common/serve.rs"]
mod serve;
use nbd_util::raw::*;
use nbd_util::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thinpool::nbd::{TlsFiles, TlsMode};

const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_STARTTLS: u32 = 5;
const OPT_EXPORT_NAME: u32 = 1;
const REP_ERR_POLICY: u32 = (1 << 31) + 2;
const REP_ERR_TLS_REQD: u32 = (1 << 31) + 5;

/// A CA, a server certificate for localhost/127.0.0.1 and a client certificate, in the file
/// names gnutls clients (libnbd, qemu) look for; `other-ca/` holds an unrelated CA.
struct Certs {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

fn openssl(args: &[&str]) {
    run(Command::new("openssl").args(args));
}

fn make_ca(dir: &Path, name: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let (key, cert) = (dir.join("ca-key.pem"), dir.join("ca-cert.pem"));
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
        "-days",
        "2",
        "-subj",
        &format!("/CN={name}"),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
}

fn make_cert(dir: &Path, who: &str, ext: &str) {
    let p = |f: &str| dir.join(f).to_str().unwrap().to_string();
    std::fs::write(dir.join(format!("{who}.ext")), ext).unwrap();
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &p(&format!("{who}-key.pem")),
        "-out",
        &p(&format!("{who}.csr")),
        "-subj",
        &format!("/CN={who}"),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p(&format!("{who}.csr")),
        "-CA",
        &p("ca-cert.pem"),
        "-CAkey",
        &p("ca-key.pem"),
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        &p(&format!("{who}-cert.pem")),
        "-extfile",
        &p(&format!("{who}.ext")),
    ]);
}

impl Certs {
    /// Certificates made with `openssl`, or `None` (a loud skip, a failure under CI)
    /// when it is missing.
    fn new() -> Option<Certs> {
        if !have_tools(&["openssl"]) {
            return None;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        make_ca(&dir, "thinpool test CA");
        make_cert(
            &dir,
            "server",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n\
             basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n",
        );
        make_cert(
            &dir,
            "client",
            "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature\n",
        );
        make_ca(&dir.join("other-ca"), "someone else's CA");
        Some(Certs { _tmp: tmp, dir })
    }
    fn path(&self, f: &str) -> PathBuf {
        self.dir.join(f)
    }
    fn files(&self, client_certs: bool) -> TlsFiles {
        TlsFiles {
            cert: self.path("server-cert.pem"),
            key: self.path("server-key.pem"),
            ca: client_certs.then(|| self.path("ca-cert.pem")),
        }
    }
    /// A client directory holding only some of the files (gnutls's names).
    fn client_dir(&self, name: &str, files: &[(&str, &Path)]) -> PathBuf {
        let d = self.dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for (to, from) in files {
            std::fs::copy(from, d.join(to)).unwrap();
        }
        d
    }
    /// A rustls client configuration trusting our CA, with the client certificate or not.
    fn client_config(&self, with_cert: bool) -> Arc<rustls::ClientConfig> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(self.path("ca-cert.pem")).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let b = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        Arc::new(if with_cert {
            let chain = CertificateDer::pem_file_iter(self.path("client-cert.pem"))
                .unwrap()
                .map(|c| c.unwrap())
                .collect();
            let key = PrivateKeyDer::from_pem_file(self.path("client-key.pem")).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        } else {
            b.with_no_client_auth()
        })
    }
}

fn tls_server(dir: &Path, certs: &Certs, mode: TlsMode, client_certs: bool) -> Server {
    let mut o = thinpool::nbd::ServeOptions::new(dir);
    o.tls_mode = mode;
    o.tls = Some(certs.files(client_certs));
    Server::start_with(o)
}

type TlsRaw = Raw<rustls::StreamOwned<rustls::ClientConnection, UnixStream>>;

/// STARTTLS on `c` (acknowledged), then the TLS handshake as `localhost`.
fn starttls(mut c: Raw, config: Arc<rustls::ClientConfig>) -> TlsRaw {
    c.option(OPT_STARTTLS, &[]);
    assert_eq!(c.option_reply().1, REP_ACK, "STARTTLS acknowledged");
    let conn = rustls::ClientConnection::new(config, "localhost".try_into().unwrap()).unwrap();
    let mut tls = Raw::over(rustls::StreamOwned::new(conn, c.s));
    while tls.s.conn.is_handshaking() {
        tls.s.conn.complete_io(&mut tls.s.sock).unwrap();
    }
    tls
}

fn hello(sock: &Path) -> Raw {
    let mut c = Raw::connect(sock);
    c.send(&3u32.to_be_bytes()); // FIXED_NEWSTYLE | NO_ZEROES
    c
}

#[test]
fn plaintext_options_against_tls_require_get_tls_reqd() {
    let Some(certs) = Certs::new() else { return };
    let t = make_pool(&[("v", 4 * MIB)], 64 << 10);
    let srv = tls_server(&pool_dir(&t), &certs, TlsMode::Require, false);
    let mut c = hello(&srv.socket);
    for (opt, data) in [
        (OPT_LIST, Vec::new()),
        (OPT_GO, Raw::go_data("v")),
        (OPT_STRUCTURED, Vec::new()),
        (OPT_SET_META, Raw::meta_data("v", &["base:allocation"])),
        (0x7777, Vec::new()),
    ] {
        c.option(opt, &data);
        let (o, ty, _) = c.option_reply();
        assert_eq!(
            (o, ty),
            (opt, REP_ERR_TLS_REQD),
            "option {opt} before STARTTLS"
        );
    }
    // STARTTLS itself is checked: it takes no data.
    c.option(OPT_STARTTLS, b"x");
    assert_eq!(c.option_reply().1, REP_ERR_INVALID);
    c.option(OPT_ABORT, &[]);
    assert_eq!(c.option_reply().1, REP_ACK);
    assert!(c.closed());
    // NBD_OPT_EXPORT_NAME cannot be refused politely: the server hangs up.
    let mut c = hello(&srv.socket);
    c.option(OPT_EXPORT_NAME, b"v");
    assert!(
        c.closed(),
        "EXPORT_NAME in plain text under --tls require must close"
    );
    srv.stop().unwrap();
}

#[test]
fn starttls_without_certificates_is_refused_by_policy() {
    let t = make_pool(&[("v", 4 * MIB)], 64 << 10);
    let srv = Server::start(&pool_dir(&t));
    let mut c = hello(&srv.socket);
    c.option(OPT_STARTTLS, &[]);
    assert_eq!(c.option_reply().1, REP_ERR_POLICY);
    // The session goes on in plain text.
    c.go("v").unwrap();
    assert_eq!(c.write(1, 0, &[7u8; 512]), 0);
    assert_eq!(c.read(2, 0, 512).unwrap(), vec![7u8; 512]);
    srv.stop().unwrap();
}

#[test]
fn starttls_starts_negotiation_over_and_carries_large_requests() {
    let Some(certs) = Certs::new() else { return };
    let t = make_pool(&[("v", 16 * MIB)], 64 << 10);
    let srv = tls_server(&pool_dir(&t), &certs, TlsMode::On, false);
    let mut c = hello(&srv.socket);
    // Structured replies agreed in plain text must not survive STARTTLS (CVE-2021-3716).
    c.option(OPT_STRUCTURED, &[]);
    assert_eq!(c.option_reply().1, REP_ACK);
    let mut c = starttls(c, certs.client_config(false));
    c.option(OPT_STARTTLS, &[]);
    assert_eq!(c.option_reply().1, REP_ERR_INVALID, "a second STARTTLS");
    c.go("v").unwrap();
    assert_eq!(c.size, 16 * MIB);
    // Simple replies (structured was forgotten), and payloads far larger than one TLS
    // record or one pump piece, both ways.
    let big: Vec<u8> = (0..3 * MIB as usize + 4097)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    assert_eq!(c.write(1, 12345, &big), 0);
    c.request(0, 0, 2, 12345, big.len() as u32, &[]);
    assert_eq!(
        c.u32(),
        SIMPLE,
        "a simple reply: structured replies were reset"
    );
    assert_eq!((c.u32(), c.u64()), (0, 2));
    assert!(c.bytes(big.len()) == big, "data read back over TLS differs");
    // Pipelined: many requests before reading any reply.
    for h in 0..64u64 {
        c.request(0, 0, 100 + h, h * 4096, 4096, &[]);
    }
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..64 {
        let (e, h) = c.simple();
        assert_eq!(e, 0);
        c.bytes(4096);
        seen.insert(h);
    }
    assert_eq!(seen.len(), 64);
    c.request(0, 2, 9, 0, 0, &[]); // NBD_CMD_DISC
    drop(c);
    srv.stop().unwrap();
    // Everything acknowledged is in the pool.
    let mut p = thinpool::pool::Pool::open(&pool_dir(&t), &Default::default()).unwrap();
    let id = p.volume_id("v").unwrap();
    let mut back = vec![0u8; big.len()];
    p.read(id, 12345, &mut back).unwrap();
    assert!(back == big);
}

#[test]
fn client_certificates_are_required_with_tls_ca() {
    let Some(certs) = Certs::new() else { return };
    let t = make_pool(&[("v", 4 * MIB)], 64 << 10);
    let srv = tls_server(&pool_dir(&t), &certs, TlsMode::Require, true);
    // Without a certificate the handshake fails (the server demands one).
    let mut c = hello(&srv.socket);
    c.option(OPT_STARTTLS, &[]);
    assert_eq!(c.option_reply().1, REP_ACK);
    let conn =
        rustls::ClientConnection::new(certs.client_config(false), "localhost".try_into().unwrap())
            .unwrap();
    let mut s = rustls::StreamOwned::new(conn, c.s);
    let mut failed = false;
    // TLS 1.3: the client finishes first; the refusal arrives as an alert on the next read.
    for _ in 0..10 {
        let mut b = [0u8; 1];
        let r = if s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock).map(|_| 1)
        } else {
            s.write_all(&[0u8; 16])
                .and_then(|_| s.flush())
                .and_then(|_| s.read(&mut b))
        };
        match r {
            Err(_) | Ok(0) => {
                failed = true;
                break;
            }
            Ok(_) => {}
        }
    }
    assert!(failed, "a client without a certificate was served");
    // With one, it is served.
    let mut c = starttls(hello(&srv.socket), certs.client_config(true));
    c.go("v").unwrap();
    assert_eq!(c.write(1, 0, &[9u8; 4096]), 0);
    srv.stop().unwrap();
}

#[test]
fn a_malformed_tls_handshake_disturbs_no_other_connection() {
    let Some(certs) = Certs::new() else { return };
    let t = make_pool(&[("v", 4 * MIB)], 64 << 10);
    let srv = tls_server(&pool_dir(&t), &certs, TlsMode::On, false);
    // One client attached in plain text (TLS is offered, not required), one over TLS.
    let mut plain = Raw::attach(&srv.socket, "v", false);
    assert_eq!(plain.write(1, 0, &[1u8; 4096]), 0);
    let mut secure = starttls(hello(&srv.socket), certs.client_config(false));
    secure.go("v").unwrap();
    assert_eq!(secure.write(1, 4096, &[2u8; 4096]), 0);
    // STARTTLS acknowledged, then garbage where the ClientHello belongs: closed quickly.
    for garbage in [vec![0x16u8, 3, 1, 0xff, 0xff, 1, 2, 3], vec![0x55u8; 8192]] {
        let mut bad = hello(&srv.socket);
        bad.option(OPT_STARTTLS, &[]);
        assert_eq!(bad.option_reply().1, REP_ACK);
        let t0 = Instant::now();
        let _ = bad.s.write_all(&garbage);
        let mut sink = Vec::new();
        // An alert record may come first; then EOF (a reset counts as closed too).
        let _ = bad.s.read_to_end(&mut sink);
        assert!(t0.elapsed() < Duration::from_secs(10), "not closed in time");
        assert!(
            sink.len() < 64,
            "{} bytes back for a broken handshake",
            sink.len()
        );
    }
    // A TLS session cut in the middle of a request: closed, nothing else affected.
    let mut cut = starttls(hello(&srv.socket), certs.client_config(false));
    cut.go("v").unwrap();
    cut.s
        .sock
        .write_all(&[0x17, 3, 3, 0, 200, 1, 2, 3])
        .unwrap();
    let _ = cut.s.sock.shutdown(std::net::Shutdown::Write);
    let mut rest = Vec::new();
    let _ = cut.s.sock.read_to_end(&mut rest);
    // The others go on.
    assert_eq!(plain.read(2, 0, 4096).unwrap(), vec![1u8; 4096]);
    assert_eq!(plain.read(3, 4096, 4096).unwrap(), vec![2u8; 4096]);
    assert_eq!(secure.read(4, 0, 4096).unwrap(), vec![1u8; 4096]);
    let mut again = starttls(hello(&srv.socket), certs.client_config(false));
    again.go("v").unwrap();
    assert_eq!(again.read(5, 4096, 4096).unwrap(), vec![2u8; 4096]);
    srv.stop().unwrap();
}

/// The real server on TCP loopback (port chosen by the kernel, read from its log).
fn serve_tcp(dir: &Path, args: &[&str]) -> (std::process::Child, u16, PathBuf) {
    let log = dir.parent().unwrap().join("serve.log");
    let mut a = vec!["--listen", "127.0.0.1:0"];
    a.extend_from_slice(args);
    let child = serve::spawn(dir, &a, &[], Some(&log));
    let text = std::fs::read_to_string(&log).unwrap();
    let port = text
        .split("tcp:127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in the log:\n{text}"));
    (child, port, log)
}

/// The effective user id of this test process.
fn nix_euid() -> u32 {
    let o = run(Command::new("id").arg("-u"));
    stdout(&o).trim().parse().unwrap()
}

#[test]
fn nbdinfo_qemu_img_and_fio_over_tls() {
    if !have_tools(&["nbdinfo", "qemu-img", "fio", "unshare"]) {
        return;
    }
    let Some(certs) = Certs::new() else { return };
    let t = make_pool(&[("v", 64 * MIB)], 64 << 10);
    let dir = pool_dir(&t);
    let p = |f: &str| certs.path(f).to_str().unwrap().to_string();
    let (child, port, log) = serve_tcp(
        &dir,
        &[
            "--tls",
            "require",
            "--tls-cert",
            &p("server-cert.pem"),
            "--tls-key",
            &p("server-key.pem"),
            "--tls-ca",
            &p("ca-cert.pem"),
        ],
    );
    let uri = |d: &Path| format!("nbds://127.0.0.1:{port}/v?tls-certificates={}", d.display());
    // With the CA and a client certificate: served.
    let o = run(Command::new("nbdinfo").args(["--size", &uri(&certs.dir)]));
    assert_eq!(stdout(&o).trim(), (64 * MIB).to_string());
    // No CA to check the server with, or the wrong one: the client refuses the server.
    let no_ca = certs.client_dir(
        "no-ca",
        &[
            ("client-cert.pem", &certs.path("client-cert.pem")),
            ("client-key.pem", &certs.path("client-key.pem")),
        ],
    );
    let wrong_ca = certs.client_dir(
        "wrong-ca",
        &[
            ("ca-cert.pem", &certs.path("other-ca/ca-cert.pem")),
            ("client-cert.pem", &certs.path("client-cert.pem")),
            ("client-key.pem", &certs.path("client-key.pem")),
        ],
    );
    // The CA but no client certificate: the server refuses the client.
    let no_cert = certs.client_dir("no-cert", &[("ca-cert.pem", &certs.path("ca-cert.pem"))]);
    for d in [&no_ca, &wrong_ca, &no_cert] {
        let o = Command::new("nbdinfo")
            .args(["--size", &uri(d)])
            .output()
            .unwrap();
        assert!(
            !o.status.success(),
            "nbdinfo with {} was served",
            d.display()
        );
    }
    // Plain text against --tls require: refused.
    let o = Command::new("nbdinfo")
        .args(["--size", &format!("nbd://127.0.0.1:{port}/v")])
        .output()
        .unwrap();
    assert!(!o.status.success(), "a plaintext nbdinfo was served");
    // qemu-img writes 8 MiB of random data over TLS and compares it back.
    let img = t.path().join("r.img");
    let data: Vec<u8> = (0..8 * MIB as usize)
        .map(|i| ((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8)
        .collect();
    std::fs::write(&img, &data).unwrap();
    let obj = format!(
        "tls-creds-x509,id=t0,dir={},endpoint=client",
        certs.dir.display()
    );
    let target = format!(
        "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},export=v,\
         tls-creds=t0"
    );
    run(Command::new("qemu-img").args([
        "convert",
        "-n",
        "--object",
        &obj,
        "-f",
        "raw",
        img.to_str().unwrap(),
        "--target-image-opts",
        &target,
    ]));
    let o = run(Command::new("qemu-img").args([
        "compare",
        "--object",
        &obj,
        "--image-opts",
        &format!("driver=file,filename={}", img.display()),
        &target,
    ]));
    assert!(
        stdout(&o).contains("Images are identical"),
        "{}",
        stdout(&o)
    );
    // fio writes and verifies through libnbd's nbds:// URI. fio's engine may not name a
    // certificate directory in the URI (libnbd refuses local file access there), so it
    // finds the certificates in libnbd's default place under a private $HOME. libnbd looks
    // in /etc/pki/libnbd instead when it runs as root, so as root fio runs in a user
    // namespace where it is uid 1000 (still the owner of our files).
    let home = t.path().join("home");
    let pki = home.join(".pki");
    std::fs::create_dir_all(&pki).unwrap();
    let libnbd = certs.client_dir(
        "libnbd",
        &[
            ("ca-cert.pem", &certs.path("ca-cert.pem")),
            ("client-cert.pem", &certs.path("client-cert.pem")),
            ("client-key.pem", &certs.path("client-key.pem")),
        ],
    );
    std::os::unix::fs::symlink(&libnbd, pki.join("libnbd")).unwrap();
    let mut fio = if nix_euid() == 0 {
        let mut c = Command::new("unshare");
        c.args(["--map-user=1000", "--map-group=1000", "fio"]);
        c
    } else {
        Command::new("fio")
    };
    let o = run(fio.env("HOME", &home).current_dir(t.path()).args([
        "--name=tls",
        "--ioengine=nbd",
        &format!("--uri=nbds://127.0.0.1:{port}/v"),
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=8",
        "--size=16M",
        "--offset=32M",
        "--verify=crc32c",
        "--verify_fatal=1",
        "--do_verify=1",
        "--output-format=json",
    ]));
    // fio may print notes before the JSON document.
    let out = stdout(&o);
    let json = &out[out
        .find('{')
        .unwrap_or_else(|| panic!("no JSON from fio: {out}"))..];
    let j: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {out}"));
    let job = &j["jobs"][0];
    assert_eq!(job["error"].as_u64(), Some(0), "fio: {out}");
    assert!(
        job["write"]["io_bytes"].as_u64().unwrap() >= 16 * MIB,
        "{job}"
    );
    assert!(
        job["read"]["io_bytes"].as_u64().unwrap() >= 16 * MIB,
        "nothing verified: {job}"
    );
    assert!(serve::sigterm(child).success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("tls=Require") && text.contains("client_certs=true"),
        "{text}"
    );
    assert!(
        text.contains("tls=true"),
        "no client attached over TLS:\n{text}"
    );
    assert!(
        !text.contains("tls=false"),
        "a client attached in plain text:\n{text}"
    );
}

#[test]
fn remote_listeners_need_tls_or_an_explicit_plaintext_flag() {
    let Some(certs) = Certs::new() else { return };
    let t = make_pool(&[("v", 4 * MIB)], 64 << 10);
    let dir = pool_dir(&t);
    let p = |f: &str| certs.path(f).to_str().unwrap().to_string();
    let serve = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_thinpool"))
            .arg("serve")
            .arg(&dir)
            .args(args)
            .output()
            .unwrap()
    };
    let refused = |args: &[&str], says: &str| {
        let o = serve(args);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    };
    let tls = [
        "--tls-cert",
        &p("server-cert.pem"),
        "--tls-key",
        &p("server-key.pem"),
    ];
    refused(&["--listen", "0.0.0.0:0"], "--allow-remote");
    refused(
        &["--listen", "0.0.0.0:0", "--allow-remote"],
        "--allow-plaintext-remote",
    );
    let mut on = vec!["--listen", "0.0.0.0:0", "--allow-remote", "--tls", "on"];
    on.extend_from_slice(&tls);
    refused(&on, "--tls require");
    // Bad certificate arguments: clear errors naming the file.
    refused(&["--tls", "require"], "--tls-cert");
    refused(
        &[
            "--tls-cert",
            &p("server-key.pem"),
            "--tls-key",
            &p("server-key.pem"),
        ],
        "server-key.pem",
    );
    refused(
        &[
            "--tls-cert",
            &p("server-cert.pem"),
            "--tls-key",
            &p("client-key.pem"),
        ],
        "does not go with",
    );
    refused(
        &[
            "--tls-cert",
            &p("nonexistent.pem"),
            "--tls-key",
            &p("server-key.pem"),
        ],
        "nonexistent.pem",
    );
    let mut off = vec!["--tls", "off"];
    off.extend_from_slice(&tls);
    refused(&off, "--tls off");
    // Accepted: TLS required, or plain text asked for by name.
    let mut req = vec![
        "--listen",
        "0.0.0.0:0",
        "--allow-remote",
        "--tls",
        "require",
    ];
    req.extend_from_slice(&tls);
    for args in [
        &req[..],
        &["--listen", "0.0.0.0:0", "--allow-plaintext-remote"],
    ] {
        let child = serve::spawn(&dir, args, &[], None);
        assert!(serve::sigterm(child).success(), "{args:?}");
    }
}
