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

/// `thinpool iostat` while fio runs at a steady rate (1000 reads and 1000 writes a second,
/// 4 KiB): its per-second rates agree with fio's own within 10 %, it times every request
/// and sees the commit timer; without a server it says so.
#[test]
fn iostat_rates_agree_with_fio() {
    if !have_tools(&["fio"]) {
        return;
    }
    let bin = env!("CARGO_BIN_EXE_thinpool");
    let t = make_pool(&[("vol", 256 * MIB)], 64 << 10);
    let dir = pool_dir(&t);
    let p = dir.to_str().unwrap().to_string();
    let refused = run_raw(Command::new(bin).args(["iostat", &p]));
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("no `thinpool serve` is running"),
        "{refused:?}"
    );
    let bad = run_raw(Command::new(bin).args(["iostat", &p, "0"]));
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");

    let srv = Server::start(&dir);
    let fio = Command::new("fio")
        .current_dir(t.path())
        .args([
            "--name=steady",
            "--ioengine=nbd",
            &format!("--uri={}", srv.uri("vol")),
            "--rw=randrw",
            "--bs=4k",
            "--iodepth=4",
            "--size=128m",
            "--rate_iops=1000,1000",
            "--time_based",
            "--runtime=8",
            "--output-format=json",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let o = run(Command::new(bin).args(["iostat", &p, "1", "5", "--json"]));
    let reports: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let fio = fio.wait_with_output().unwrap();
    assert!(fio.status.success(), "fio failed");
    let out = String::from_utf8_lossy(&fio.stdout);
    let v: serde_json::Value = serde_json::from_str(&out[out.find('{').unwrap()..]).unwrap();
    let job = &v["jobs"][0];
    assert_eq!(reports.len(), 5, "{reports:?}");
    let mean = |f: &dyn Fn(&serde_json::Value) -> f64| {
        reports.iter().map(f).sum::<f64>() / reports.len() as f64
    };
    let mut commits = 0.0;
    for r in &reports {
        let vol = &r["volumes"][0];
        assert_eq!(vol["name"], "vol", "{r}");
        for kind in ["read", "write"] {
            assert!(
                vol[kind]["latency_ms"]["p50"].as_f64().unwrap() > 0.0,
                "{r}"
            );
            assert!(
                vol[kind]["latency_ms"]["max"].as_f64().unwrap() > 0.0,
                "{r}"
            );
        }
        commits += r["commits"]["per_s"].as_f64().unwrap() * r["interval_s"].as_f64().unwrap();
        assert!(r["space"]["data_used_bytes"].as_u64().unwrap() > 0, "{r}");
    }
    // The default commit timer (1 s) commits new mappings about once a second.
    assert!(commits >= 2.0, "{commits} commits in 5 s");
    for kind in ["read", "write"] {
        let ops = mean(&|r| r["volumes"][0][kind]["ops_per_s"].as_f64().unwrap());
        let bytes = mean(&|r| r["volumes"][0][kind]["bytes_per_s"].as_f64().unwrap());
        let fio_ops = job[kind]["iops"].as_f64().unwrap();
        let fio_bytes = job[kind]["bw_bytes"].as_f64().unwrap();
        eprintln!(
            "{kind}: iostat {ops:.1} IOPS {bytes:.0} B/s, fio {fio_ops:.1} IOPS {fio_bytes:.0} B/s"
        );
        assert!(
            (ops - fio_ops).abs() <= 0.1 * fio_ops,
            "{kind}: {ops} vs fio {fio_ops}"
        );
        assert!(
            (bytes - fio_bytes).abs() <= 0.1 * fio_bytes,
            "{kind}: {bytes} vs fio {fio_bytes}"
        );
    }
    // Without INTERVAL: one report of everything since the start, as text.
    let text = stdout(&run(Command::new(bin).args(["iostat", &p])));
    assert!(text.contains("since the server started"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("vol ")), "{text}");
    srv.stop().unwrap();
}

fn run_raw(cmd: &mut Command) -> std::process::Output {
    cmd.output().unwrap()
}
