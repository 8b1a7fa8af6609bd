//! `thinpool export|import|export-diff|import-diff` round trips through the real binary,
//! checked with `cmp`; sparseness checked with `st_blocks` and `qemu-img map`; interop with
//! Ceph's `rbd merge-diff` when `rbd` is installed.

mod common;
use common::*;
use serde_json::Value;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::Command;
use thinpool::pool::{OpenOptions, Pool};

const MIB: u64 = 1 << 20;

fn cmp(a: &Path, b: &Path) {
    let st = Command::new("cmp").arg(a).arg(b).status().expect("run cmp");
    assert!(st.success(), "cmp {} {} differ", a.display(), b.display());
}

fn have(tool: &str) -> bool {
    tools::have_tools(&[tool])
}

/// A sparse source image: data extents, an explicit run of zeros, holes, an unaligned tail.
fn make_image(path: &Path, size: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    f.write_all_at(&pattern(1, 300_000), 0).unwrap();
    f.write_all_at(&vec![0u8; 256 * 1024], 1 << 20).unwrap(); // zeros, allocated
    f.write_all_at(&pattern(2, 70_000), 3 * MIB + 12_345)
        .unwrap();
    f.write_all_at(&pattern(3, 5000), size - 5000).unwrap();
}

fn mapped(tp: &TestPool, vol: &str) -> u64 {
    tp.vol(vol)["mapped_blocks"].as_u64().unwrap()
}

#[test]
fn import_export_round_trip_is_exact_and_skips_zeros() {
    let tp = TestPool::new("256M", "64K");
    let src = tp.file("src.img");
    let size = 8 * MIB + 777; // not a multiple of the block size
    make_image(&src, size);
    let out = tp.run(&["import", "{}", "vm", src.to_str().unwrap()]).ok();
    assert!(out.text().contains("imported"), "{}", out.text());
    assert_eq!(tp.vol("vm")["size"].as_u64(), Some(size));
    // 300000 B -> 5 blocks, 70000 B at 3M+12345 -> 2 blocks, the tail straddles 2 blocks;
    // the explicit zeros take none.
    assert_eq!(mapped(&tp, "vm"), 9);

    let dst = tp.file("dst.img");
    tp.run(&["export", "{}", "vm", dst.to_str().unwrap()]).ok();
    cmp(&src, &dst);
    assert_eq!(std::fs::metadata(&dst).unwrap().len(), size);
    // Only the 9 data blocks are allocated in the exported file.
    let alloc = std::fs::metadata(&dst).unwrap().blocks() * 512;
    assert!(alloc <= 9 * 64 * 1024, "allocated {alloc}");

    // To stdout (holes written as zeros) and back in from stdin, without and with --size.
    let stream = tp.run(&["export", "{}", "vm", "-"]).ok();
    assert_eq!(stream.stdout.len() as u64, size);
    assert!(stream.stderr.contains("exported"), "{}", stream.stderr);
    assert_eq!(stream.stdout, std::fs::read(&src).unwrap());
    tp.run_in(&["import", "{}", "vm2", "-"], Some(&stream.stdout))
        .ok();
    assert_eq!(tp.vol("vm2")["size"].as_u64(), Some(size));
    assert_eq!(mapped(&tp, "vm2"), 9);
    let dst2 = tp.file("dst2.img");
    tp.run(&["export", "{}", "vm2", dst2.to_str().unwrap()])
        .ok();
    cmp(&src, &dst2);
    tp.run_in(
        &["import", "{}", "vm3", "-", "--size", "16M"],
        Some(&stream.stdout),
    )
    .ok();
    assert_eq!(tp.vol("vm3")["size"].as_u64(), Some(16 * MIB));
    let back = tp.run(&["export", "{}", "vm3", "-"]).ok().stdout;
    assert_eq!(&back[..size as usize], &stream.stdout[..]);
    assert!(back[size as usize..].iter().all(|&b| b == 0));
    tp.check_clean();
}

#[test]
fn export_then_import_is_exact() {
    let tp = TestPool::new("128M", "4K");
    tp.run(&["create", "{}", "disk", "--size", "24M"]).ok();
    for (i, off) in [0u64, 4096 * 7 + 100, 5 * MIB, 24 * MIB - 9000]
        .iter()
        .enumerate()
    {
        let f = tp.put("chunk", &pattern(i as u8 + 10, 9000));
        tp.run(&["write", "{}", "disk", "--offset", &off.to_string(), &f])
            .ok();
    }
    let a = tp.file("a.img");
    tp.run(&["export", "{}", "disk", a.to_str().unwrap()]).ok();
    tp.run(&["import", "{}", "copy", a.to_str().unwrap()]).ok();
    assert_eq!(mapped(&tp, "copy"), mapped(&tp, "disk"));
    let b = tp.file("b.img");
    tp.run(&["export", "{}", "copy", b.to_str().unwrap()]).ok();
    cmp(&a, &b);
    tp.check_clean();
}

/// Data extents of a file per `qemu-img map`, coalesced.
fn qemu_map(path: &Path) -> Vec<(u64, u64)> {
    let out = Command::new("qemu-img")
        .args(["map", "--output=json", "-f", "raw"])
        .arg(path)
        .output()
        .expect("run qemu-img");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut ext = Vec::new();
    for e in v.as_array().unwrap() {
        if e["data"].as_bool() == Some(true) {
            ext.push((e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap()));
        }
    }
    coalesce(ext)
}

fn coalesce(v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, l) in v {
        match out.last_mut() {
            Some((ps, pl)) if *ps + *pl == s => *pl += l,
            _ => out.push((s, l)),
        }
    }
    out
}

#[test]
fn export_of_10g_volume_with_100m_written_is_sparse() {
    let tp = TestPool::new("512M", "64K");
    tp.run(&["create", "{}", "big", "--size", "10G"]).ok();
    // 100 MiB in ten 10 MiB extents spread over the volume.
    let chunk = tp.put("chunk", &pattern(7, (10 * MIB) as usize));
    for i in 0..10u64 {
        let off = i * 1000 * MIB + 64 * 1024 * i;
        tp.run(&["write", "{}", "big", "--offset", &off.to_string(), &chunk])
            .ok();
    }
    let img = tp.file("big.img");
    tp.run(&["export", "{}", "big", img.to_str().unwrap()]).ok();
    let md = std::fs::metadata(&img).unwrap();
    assert_eq!(md.len(), 10 << 30);
    let alloc = md.blocks() * 512;
    eprintln!("10 GiB volume, 100 MiB written: image allocates {alloc} bytes");
    assert!(
        (100 * MIB..=102 * MIB).contains(&alloc),
        "allocated {alloc} bytes, expected about 100 MiB"
    );

    // The file's data ranges are exactly the volume's mappings.
    let mut pool = Pool::open(
        &tp.dir,
        &OpenOptions {
            read_only: true,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    let (id, _) = pool.find("big").unwrap();
    let bs = pool.block_size();
    let maps = pool.mappings(id, 0, u64::MAX, usize::MAX).unwrap();
    let vol_ranges = coalesce(maps.iter().map(|&(vb, _)| (vb * bs, bs)).collect());
    drop(pool);
    assert_eq!(vol_ranges.len(), 10);
    if have("qemu-img") {
        assert_eq!(qemu_map(&img), vol_ranges);
    }

    // Back in: the holes are skipped (SEEK_DATA), only the 1600 data blocks are written.
    let t = std::time::Instant::now();
    tp.run(&["import", "{}", "big2", img.to_str().unwrap()])
        .ok();
    eprintln!("import of the 10 GiB sparse image: {:.2?}", t.elapsed());
    assert_eq!(mapped(&tp, "big2"), 1600);
    assert_eq!(tp.vol("big2")["size"].as_u64(), Some(10 << 30));
    let img2 = tp.file("big2.img");
    tp.run(&["export", "{}", "big2", img2.to_str().unwrap()])
        .ok();
    if have("qemu-img") {
        // Same bytes; qemu-img compare knows holes, where cmp would read 10 GiB of zeros.
        let st = Command::new("qemu-img")
            .args(["compare", "-q", "-f", "raw", "-F", "raw"])
            .arg(&img)
            .arg(&img2)
            .status()
            .unwrap();
        assert!(st.success(), "qemu-img compare: images differ");
    } else {
        cmp(&img, &img2);
    }
}

/// Through a running `thinpool serve`: relative paths are the caller's, streams are refused.
#[test]
fn export_and_import_through_a_server() {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let tp = TestPool::new("64M", "64K");
    tp.run(&["create", "{}", "v", "--size", "2M"]).ok();
    tp.run(&[
        "write",
        "{}",
        "v",
        "--offset",
        "5000",
        &tp.put("d", &pattern(4, 70_000)),
    ])
    .ok();
    tp.run(&["snapshot", "{}", "v", "s"]).ok();
    let mut server = Command::new(BIN)
        .args(["serve", tp.p(), "--socket"])
        .arg(tp.file("nbd.sock"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !tp.dir.join("control.sock").exists() {
        assert!(server.try_wait().unwrap().is_none(), "serve exited early");
        assert!(Instant::now() < deadline, "no control socket after 20 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let cwd = tp.tmp.path();
    let run = |args: &[&str]| thinpool_at(args, None, Some(cwd));
    run(&["export", tp.p(), "v", "rel.img"]).ok();
    run(&["export-diff", tp.p(), "s", "rel.diff"]).ok();
    run(&["import", tp.p(), "w", "rel.img"]).ok();
    run(&["export", tp.p(), "w", "rel2.img"]).ok();
    cmp(&cwd.join("rel.img"), &cwd.join("rel2.img"));
    run(&["export", tp.p(), "v", "-"]).fails(1, "give a FILE path");
    run(&["diff", tp.p(), "s", "v", "--json"]).ok();
    // SIGTERM: a clean shutdown.
    Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(server.wait().unwrap().success());
    let c = TestPool::new("64M", "64K");
    c.run(&["create", "{}", "x", "--size", "1M"]).ok();
    c.run(&[
        "import-diff",
        "{}",
        "x",
        cwd.join("rel.diff").to_str().unwrap(),
    ])
    .ok();
    c.run(&["export", "{}", "s", c.file("s.img").to_str().unwrap()])
        .ok();
    cmp(&cwd.join("rel.img"), &c.file("s.img"));
}

/// Three snapshots on pool A; a full diff and two incremental diffs rebuild each of them on
/// pool B, byte for byte.
#[test]
fn diff_chain_across_three_snapshots_rebuilds_them_on_another_pool() {
    let a = TestPool::new("128M", "4K");
    let b = TestPool::new("128M", "64K"); // a different block size on purpose
    a.run(&["create", "{}", "disk", "--size", "16M"]).ok();
    let w = |off: u64, seed: u8, len: usize| {
        let f = a.put("w", &pattern(seed, len));
        a.run(&["write", "{}", "disk", "--offset", &off.to_string(), &f])
            .ok();
    };
    w(0, 1, 3 * MIB as usize);
    w(10 * MIB, 2, 100_000);
    a.run(&["snapshot", "{}", "disk", "s1"]).ok();
    w(4096 * 3 + 17, 3, 50_000); // partial blocks
    a.run(&[
        "discard", "{}", "disk", "--offset", "1M", "--length", "512K",
    ])
    .ok();
    let zeros = a.put("z", &vec![0u8; 64 * 1024]);
    a.run(&["write", "{}", "disk", "--offset", "2M", &zeros])
        .ok(); // mapped zeros
    a.run(&["snapshot", "{}", "disk", "s2"]).ok();
    a.run(&["resize", "{}", "disk", "--size", "20M"]).ok();
    w(19 * MIB, 4, 200_000);
    w(100, 5, 10);
    a.run(&["snapshot", "{}", "disk", "s3"]).ok();

    let d = |n: &str| a.file(n).to_str().unwrap().to_string();
    a.run(&["export-diff", "{}", "s1", &d("d1")]).ok();
    a.run(&["export-diff", "{}", "s2", &d("d2"), "--from", "s1"])
        .ok();
    // The last one through stdout / stdin.
    let d3 = a
        .run(&["export-diff", "{}", "s3", "-", "--from", "s2"])
        .ok()
        .stdout;
    assert!(d3.starts_with(b"rbd diff v1\n"));
    // Incremental diffs are small: only the changes.
    assert!(std::fs::metadata(d("d2")).unwrap().len() < 200_000);

    b.run(&["create", "{}", "disk", "--size", "1M"]).ok();
    b.run(&["import-diff", "{}", "disk", &d("d1")]).ok();
    b.run(&["import-diff", "{}", "disk", &d("d2")]).ok();
    let out = b
        .run_in(&["import-diff", "{}", "disk", "-"], Some(&d3))
        .ok();
    assert!(
        out.text().contains("created snapshot 's3'"),
        "{}",
        out.text()
    );
    // The head itself, past the last snapshot: `t` is the volume's own name, so applying it
    // to the same-named volume takes no snapshot.
    w(5 * MIB, 6, 4096);
    a.run(&["export-diff", "{}", "disk", &d("d4"), "--from", "s3"])
        .ok();
    let out = b.run(&["import-diff", "{}", "disk", &d("d4")]).ok();
    assert!(!out.text().contains("created snapshot"), "{}", out.text());
    for snap in ["s1", "s2", "s3", "disk"] {
        let (x, y) = (a.file(&format!("a-{snap}")), b.file(&format!("b-{snap}")));
        a.run(&["export", "{}", snap, x.to_str().unwrap()]).ok();
        b.run(&["export", "{}", snap, y.to_str().unwrap()]).ok();
        cmp(&x, &y);
    }
    let list = b.list();
    let s1 = list
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "s1")
        .unwrap()
        .clone();
    assert_eq!(s1["origin"], "disk");
    assert_eq!(s1["read_only"], true);
    b.check_clean();
    a.check_clean();

    // Ceph's own tool reads our streams and writes one we apply: merge d1+d2+d3 into one
    // full diff with `rbd merge-diff` (works offline), apply it to a fresh volume.
    if !have("rbd") {
        return;
    }
    std::fs::write(a.file("d3"), &d3).unwrap();
    for (x, y, o) in [("d1", "d2", "m12"), ("m12", "d3", "m123")] {
        let st = Command::new("rbd")
            .args(["merge-diff", "--no-progress", &d(x), &d(y), &d(o)])
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "rbd merge-diff: {}",
            String::from_utf8_lossy(&st.stderr)
        );
    }
    let c = TestPool::new("128M", "64K");
    c.run(&["create", "{}", "disk", "--size", "1M"]).ok();
    c.run(&["import-diff", "{}", "disk", &d("m123")]).ok();
    let (x, y) = (a.file("a-s3"), c.file("c-s3"));
    c.run(&["export", "{}", "s3", y.to_str().unwrap()]).ok();
    cmp(&x, &y);
}
