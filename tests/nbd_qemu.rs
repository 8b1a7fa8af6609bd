//! Real NBD clients against an in-process server: qemu-io, qemu-img, nbdinfo, nbdcopy.

mod nbd_util;
use nbd_util::*;
use std::process::Command;

#[test]
fn qemu_io_unaligned_patterns() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let t = make_pool(&[("vol", 64 * MIB)], 64 << 10);
    let srv = Server::start(&pool_dir(&t));
    let uri = srv.uri("vol");
    let o = run(Command::new("qemu-io").args([
        "-f",
        "raw",
        &uri,
        "-c",
        "write -P 0xab 1000 70000",
        "-c",
        "write -P 0xcd 131000 200000",
        "-c",
        "read -P 0xab 1000 70000",
        "-c",
        "read -P 0xcd 131000 200000",
        "-c",
        "read -P 0 0 1000",
        "-c",
        "read -P 0 71000 60000",
        "-c",
        "flush",
    ]));
    let out = stdout(&o);
    assert!(!out.contains("Pattern verification failed"), "{out}");
    // A second connection sees the data (multi-conn: it is all one pool).
    let o = run(Command::new("qemu-io").args(["-f", "raw", &uri, "-c", "read -P 0xab 1000 70000"]));
    assert!(!stdout(&o).contains("failed"), "{}", stdout(&o));
    srv.stop().unwrap();
}

#[test]
fn qemu_io_detects_wrong_pattern() {
    // Guards the other tests: a wrong pattern must be reported in qemu-io's output.
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let t = make_pool(&[("vol", 4 * MIB)], 64 << 10);
    let srv = Server::start(&pool_dir(&t));
    let o = Command::new("qemu-io")
        .args([
            "-f",
            "raw",
            &srv.uri("vol"),
            "-c",
            "write -P 0x11 0 4096",
            "-c",
            "read -P 0x22 0 4096",
        ])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    eprintln!("{out}");
    assert!(out.contains("Pattern verification failed"), "{out}");
}
