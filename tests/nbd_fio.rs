//! fio through its libnbd engine: random read/write with crc32c verification, four jobs
//! (four connections) on one volume, each job on its own region.

#[path = "common/nbd.rs"]
mod nbd_util;
use nbd_util::*;
use std::process::Command;

#[test]
fn fio_randrw_verify_multi_conn() {
    fio_verify(false);
}

/// The same through `serve --direct` (O_DIRECT data file): requests from 512 bytes to
/// 128 KiB at any sector, so most are unaligned and go through read-modify-write.
#[test]
fn fio_randrw_verify_multi_conn_direct() {
    fio_verify(true);
}

fn fio_verify(direct: bool) {
    if !have_tools(&["fio"]) {
        return;
    }
    let t = make_pool(&[("vol", 256 * MIB)], 64 << 10);
    let mut opts = thinpool::nbd::ServeOptions::new(pool_dir(&t));
    opts.direct = direct;
    let srv = Server::start_with(opts);
    // fio leaves verify state files in its working directory: keep them in the temp dir.
    let o = run(Command::new("fio").current_dir(t.path()).args([
        "--name=thinpool",
        "--ioengine=nbd",
        &format!("--uri={}", srv.uri("vol")),
        "--rw=randrw",
        "--bsrange=512-128k",
        "--size=32m",
        "--offset_increment=64m",
        "--numjobs=4",
        "--iodepth=8",
        "--verify=crc32c",
        "--verify_fatal=1",
        "--do_verify=1",
        "--runtime=20",
        "--group_reporting",
        "--output-format=json",
    ]));
    // fio may print notes before the JSON document.
    let out = stdout(&o);
    let json = &out[out
        .find('{')
        .unwrap_or_else(|| panic!("no JSON from fio: {out}"))..];
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {out}"));
    let job = &v["jobs"][0];
    assert_eq!(job["error"].as_u64(), Some(0), "{job}");
    assert!(job["write"]["io_bytes"].as_u64().unwrap() > 0);
    assert!(job["read"]["io_bytes"].as_u64().unwrap() > 0);
    eprintln!(
        "fio randrw (direct: {direct}): read {} KiB/s, write {} KiB/s",
        job["read"]["bw"], job["write"]["bw"]
    );
    srv.stop().unwrap();
}
