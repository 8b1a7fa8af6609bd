//! Real NBD clients against an in-process server: qemu-io, qemu-img, nbdinfo, nbdcopy.

#[path = "common/nbd.rs"]
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

const K: u64 = 1024;

/// Writes that map exactly blocks 0-1, 5 and 10-11 of a 64 KiB-block volume.
fn write_known_layout(target: &[&str]) {
    let mut args: Vec<String> = target.iter().map(|s| s.to_string()).collect();
    for c in [
        "write -P 0xab 1000 70000",
        "write -P 0x5a 327780 10",
        "write -P 0x77 655360 131072",
        "flush",
    ] {
        args.push("-c".into());
        args.push(c.into());
    }
    run(Command::new("qemu-io").args(&args));
}

const DATA: &[(u64, u64)] = &[(0, 128 * K), (320 * K, 64 * K), (640 * K, 128 * K)];

/// The expected (offset, length, is_data) layout of a 4 MiB volume after `write_known_layout`.
fn expected_layout(size: u64) -> Vec<(u64, u64, bool)> {
    let mut out = Vec::new();
    let mut pos = 0;
    for &(o, l) in DATA {
        if o > pos {
            out.push((pos, o - pos, false));
        }
        out.push((o, l, true));
        pos = o + l;
    }
    if pos < size {
        out.push((pos, size - pos, false));
    }
    out
}

#[test]
fn qemu_img_compare_map_and_nbdinfo() {
    if !have_tools(&["qemu-io", "qemu-img", "nbdinfo"]) {
        return;
    }
    let size = 4 * MIB;
    let t = make_pool(&[("vol", size)], 64 << 10);
    let srv = Server::start(&pool_dir(&t));
    let uri = srv.uri("vol");
    write_known_layout(&["-f", "raw", &uri]);
    // The same writes into a plain raw file.
    let raw = t.path().join("ref.raw");
    std::fs::File::create(&raw).unwrap().set_len(size).unwrap();
    write_known_layout(&["-f", "raw", raw.to_str().unwrap()]);
    let o = run(Command::new("qemu-img").args([
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        raw.to_str().unwrap(),
        &uri,
    ]));
    assert!(stdout(&o).contains("identical"), "{}", stdout(&o));

    // qemu-img map: mapped blocks are data, the rest zero holes.
    let o = run(Command::new("qemu-img").args(["map", "--output=json", "-f", "raw", &uri]));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let got: Vec<(u64, u64, bool)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let data = e["data"].as_bool().unwrap();
            assert_eq!(e["zero"].as_bool().unwrap(), !data, "{e}");
            (
                e["start"].as_u64().unwrap(),
                e["length"].as_u64().unwrap(),
                data,
            )
        })
        .collect();
    assert_eq!(got, expected_layout(size), "qemu-img map: {}", stdout(&o));

    // nbdinfo --map: "offset length type description" per line.
    let o = run(Command::new("nbdinfo").args(["--map", &uri]));
    let got: Vec<(u64, u64, bool)> = stdout(&o)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let ty: u32 = f[2].parse().unwrap();
            assert!(ty == 0 || ty == 3, "{l}");
            (f[0].parse().unwrap(), f[1].parse().unwrap(), ty == 0)
        })
        .collect();
    assert_eq!(got, expected_layout(size), "nbdinfo --map: {}", stdout(&o));

    // nbdinfo sees the export's properties.
    let o = run(Command::new("nbdinfo").args(["--json", &uri]));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let e = &v["exports"][0];
    assert_eq!(e["export-size"].as_u64(), Some(size), "{v}");
    assert_eq!(e["can_multi_conn"].as_bool(), Some(true), "{v}");
    assert_eq!(e["is_read_only"].as_bool(), Some(false), "{v}");
    assert_eq!(e["block_size_maximum"].as_u64(), Some(32 * MIB), "{v}");
    srv.stop().unwrap();
}

#[test]
fn nbdcopy_out_and_in() {
    if !have_tools(&["qemu-io", "qemu-img", "nbdcopy"]) {
        return;
    }
    let size = 4 * MIB;
    let t = make_pool(&[("src", size), ("dst", size)], 64 << 10);
    let srv = Server::start(&pool_dir(&t));
    write_known_layout(&["-f", "raw", &srv.uri("src")]);
    let file = t.path().join("out.raw");
    run(Command::new("nbdcopy").args([&srv.uri("src"), file.to_str().unwrap()]));
    assert_eq!(std::fs::metadata(&file).unwrap().len(), size);
    let o = run(Command::new("qemu-img").args([
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        file.to_str().unwrap(),
        &srv.uri("src"),
    ]));
    assert!(stdout(&o).contains("identical"));
    run(Command::new("nbdcopy").args([file.to_str().unwrap(), &srv.uri("dst")]));
    let o = run(Command::new("qemu-img").args([
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        &srv.uri("src"),
        &srv.uri("dst"),
    ]));
    assert!(stdout(&o).contains("identical"));
    // Volume to volume, several connections each way.
    run(Command::new("nbdcopy").args(["--connections=4", &srv.uri("dst"), &srv.uri("src")]));
    srv.stop().unwrap();
}
