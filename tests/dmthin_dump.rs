//! `thinpool dump` and `restore` (issue 12), with Debian's thin-provisioning-tools as the
//! other side: a pool dumped as XML goes through `thin_restore`, `thin_check` and
//! `thin_dump`, and comes back with `restore --data` on the original data file, reading
//! byte for byte what the original holds. Bad input leaves nothing behind.

mod common;

use common::tools::have_tools;
use common::{pattern, thinpool, thinpool_in, TestPool};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// A pool with what a dump must carry: several volumes, runs and single mappings, blocks
/// shared by a snapshot and then copied on write, a discarded hole, a read-only snapshot
/// and a volume that maps nothing.
fn busy_pool() -> TestPool {
    let tp = TestPool::new("64M", "64K");
    let p = tp.p();
    thinpool(&["create", p, "vm", "-s", "16M"]).ok();
    let base = tp.put("base", &pattern(1, 5 << 20));
    thinpool(&["write", p, "vm", &base, "--offset", "1M"]).ok();
    thinpool(&["snapshot", p, "vm", "snap", "--read-only"]).ok();
    let patch = tp.put("patch", &pattern(2, 300 << 10));
    thinpool(&["write", p, "vm", &patch, "--offset", "2M"]).ok();
    // Single blocks, apart from each other.
    for (i, off) in ["9M", "11M", "13M"].iter().enumerate() {
        let one = tp.put(&format!("one{i}"), &pattern(10 + i as u8, 64 << 10));
        thinpool(&["write", p, "vm", &one, "--offset", off]).ok();
    }
    thinpool(&["discard", p, "vm", "--offset", "4M", "--length", "256K"]).ok();
    thinpool(&["create", p, "other", "-s", "8M"]).ok();
    let tail = tp.put("tail", &pattern(3, 100 << 10));
    thinpool(&["write", p, "other", &tail, "--offset", "7M"]).ok();
    thinpool(&["create", p, "empty", "-s", "1M"]).ok();
    tp
}

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Every volume of `pool` by id: (name, size, read_only, origin id).
fn volumes(pool: &str) -> Vec<(u64, String, u64, bool)> {
    let v = thinpool(&["list", pool, "--json"]).ok().json();
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["id"].as_u64().unwrap(),
                x["name"].as_str().unwrap().to_string(),
                x["size"].as_u64().unwrap(),
                x["read_only"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn read_all(pool: &str, vol: &str) -> Vec<u8> {
    thinpool(&["read", pool, "--", vol]).ok().stdout
}

fn sha(path: &Path) -> String {
    run(Command::new("sha256sum").arg(path))
}

#[test]
fn an_xml_dump_goes_through_thin_restore_thin_check_thin_dump_and_back() {
    if !have_tools(&["thin_restore", "thin_check", "thin_dump"]) {
        return;
    }
    let tp = busy_pool();
    let xml = tp.file("pool.xml");
    thinpool(&["dump", tp.p(), "--output", xml.to_str().unwrap()])
        .ok()
        .text();
    // dm-thin's tools take it: restore into a metadata file, check, dump again.
    let meta = tp.file("dm-metadata");
    std::fs::File::create(&meta)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    run(Command::new("thin_restore")
        .arg("-i")
        .arg(&xml)
        .arg("-o")
        .arg(&meta));
    run(Command::new("thin_check").arg(&meta));
    let again = run(Command::new("thin_dump").arg(&meta));
    // The same devices and mappings (thin_dump keeps no pool UUID).
    let ours = std::fs::read_to_string(&xml).unwrap();
    let strip = |s: &str| s.lines().skip(1).map(str::to_string).collect::<Vec<_>>();
    assert_eq!(strip(&ours), strip(&again));
    assert!(ours.contains("<single_mapping"), "{ours}");
    assert!(ours.contains("<range_mapping"), "{ours}");

    // Back into thinpool on the original data file, in place.
    let again_path = tp.put("again.xml", again.as_bytes());
    let data = tp.dir.join("data");
    let data_sum = sha(&data);
    let restored = tp.file("restored");
    let r = restored.to_str().unwrap();
    let rep = thinpool(&[
        "restore",
        r,
        "--input",
        &again_path,
        "--data",
        data.to_str().unwrap(),
        "--json",
    ])
    .ok()
    .json();
    assert_eq!(rep["volumes"], 4);
    assert_eq!(
        sha(&data),
        data_sum,
        "restore wrote into the adopted data file"
    );
    assert_eq!(
        std::fs::read_link(restored.join("data")).unwrap(),
        std::fs::canonicalize(&data).unwrap()
    );
    thinpool(&["check", r]).ok();

    // Devices restored from XML are named by dev_id and sized to their highest mapping;
    // every byte they cover reads as the original, and the original is zero past them.
    let orig = volumes(tp.p());
    let back = volumes(r);
    assert_eq!(back.len(), orig.len());
    for ((id, name, size, _), (rid, rname, rsize, _)) in orig.iter().zip(&back) {
        assert_eq!(id, rid);
        assert_eq!(rname, &id.to_string());
        assert!(rsize <= size, "{name}: {rsize} > {size}");
        let a = read_all(tp.p(), name);
        let b = read_all(r, rname);
        assert_eq!(b.len() as u64, *rsize);
        assert!(
            a[..b.len()] == b[..],
            "{name} differs from restored {rname}"
        );
        assert!(
            a[b.len()..].iter().all(|&x| x == 0),
            "{name} maps past {rsize}"
        );
    }
    // Shared blocks stay shared: the snapshot and its origin share what they shared.
    let orig_list = thinpool(&["list", tp.p(), "--json"]).ok().json();
    let back_list = thinpool(&["list", r, "--json"]).ok().json();
    let shared = |l: &Value| -> Vec<u64> {
        l.as_array()
            .unwrap()
            .iter()
            .map(|v| v["shared_blocks"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(shared(&orig_list), shared(&back_list));
    assert!(shared(&back_list)[0] > 0);
    // And a write to one copies the block instead of changing the other.
    let snap_id = orig.iter().find(|v| v.1 == "snap").unwrap().0.to_string();
    let vm_id = orig.iter().find(|v| v.1 == "vm").unwrap().0.to_string();
    let before = read_all(r, &snap_id);
    let x = tp.put("x", &pattern(9, 64 << 10));
    thinpool(&["write", r, &vm_id, &x, "--offset", "1M"]).ok();
    assert_eq!(read_all(r, &snap_id), before);
    assert_eq!(
        read_all(r, &vm_id)[1 << 20..(1 << 20) + (64 << 10)],
        pattern(9, 64 << 10)[..]
    );
    thinpool(&["check", r]).ok();
}

#[test]
fn a_json_dump_restores_names_sizes_flags_and_origins() {
    let tp = busy_pool();
    let out = thinpool(&["dump", tp.p(), "--format", "json"]).ok();
    let dump = out.json();
    let file = tp.put("pool.json", &out.stdout);
    let restored = tp.file("restored");
    let r = restored.to_str().unwrap();
    let data = tp.dir.join("data");
    thinpool(&["restore", r, "-i", &file, "--data", data.to_str().unwrap()]).ok();
    assert_eq!(volumes(tp.p()), volumes(r));
    for (_, name, _, _) in volumes(tp.p()) {
        assert!(read_all(tp.p(), &name) == read_all(r, &name), "{name}");
    }
    let info = thinpool(&["info", r, "--json", "snap"]).ok().json();
    assert_eq!(info["origin"], "vm");
    assert_eq!(info["read_only"], true);
    // Dumping the restored pool gives the same devices (the superblock differs: a new
    // UUID, a new seq).
    let again = thinpool(&["dump", r, "--format", "json"]).ok().json();
    assert_eq!(again["devices"], dump["devices"]);
    assert_eq!(again["time"], dump["time"]);
    assert_ne!(again["uuid"], dump["uuid"]);
    tp.check_clean();
    thinpool(&["check", r]).ok();
}

#[test]
fn a_restore_from_stdin_without_data_gives_zeroed_volumes_of_the_same_shape() {
    let tp = busy_pool();
    let xml = thinpool(&["dump", tp.p()]).ok().stdout;
    let restored = tp.file("restored");
    let r = restored.to_str().unwrap();
    thinpool_in(&["restore", r, "--input", "-"], Some(&xml)).ok();
    let orig = thinpool(&["list", tp.p(), "--json"]).ok().json();
    let back = thinpool(&["list", r, "--json"]).ok().json();
    for (a, b) in orig
        .as_array()
        .unwrap()
        .iter()
        .zip(back.as_array().unwrap())
    {
        assert_eq!(a["mapped_blocks"], b["mapped_blocks"]);
        assert_eq!(a["shared_blocks"], b["shared_blocks"]);
        let name = b["name"].as_str().unwrap();
        assert!(read_all(r, name).iter().all(|&x| x == 0), "{name}");
    }
    // The XML of the restored pool maps the same blocks.
    let again = thinpool(&["dump", r]).ok().text();
    let body = |s: &str| s.lines().skip(1).map(str::to_string).collect::<Vec<_>>();
    assert_eq!(body(&again), body(&String::from_utf8(xml).unwrap()));
    thinpool(&["check", r]).ok();
}

#[test]
fn dump_at_an_older_seq_shows_that_commit() {
    let tp = TestPool::new("16M", "64K");
    let p = tp.p();
    thinpool(&["create", p, "a", "-s", "1M"]).ok();
    let seq = tp.info()["seq"].as_u64().unwrap();
    let d = tp.put("d", &pattern(4, 128 << 10));
    thinpool(&["write", p, "a", &d]).ok();
    let now = thinpool(&["dump", p]).ok().text();
    assert!(now.contains(r#"mapped_blocks="2""#), "{now}");
    let then = thinpool(&["dump", p, "--at-seq", &seq.to_string()])
        .ok()
        .text();
    assert!(then.contains(r#"mapped_blocks="0""#), "{then}");
    assert!(then.contains(&format!(r#"transaction="{seq}""#)), "{then}");
}

/// Bad dumps: each is refused with a message naming the problem, by file and by pipe,
/// and no pool directory is left (or a directory the user made stays empty).
#[test]
fn bad_dumps_are_refused_and_leave_nothing_behind() {
    let tp = busy_pool();
    let good = thinpool(&["dump", tp.p()]).ok().text();
    let cases: Vec<(String, &str)> = vec![
        (good.replace("</superblock>", ""), "truncated"),
        (
            good.replacen("<device", "<devise", 1),
            "unknown element <devise>",
        ),
        (
            good.replace(r#"data_block_size="128""#, r#"data_block_size="384""#),
            "cannot be a thinpool block size",
        ),
        (
            good.replace(r#"nr_data_blocks="1024""#, r#"nr_data_blocks="10""#),
            "past the pool's 10 data blocks",
        ),
        (
            good.replacen(r#"mapped_blocks=""#, r#"mapped_blocks="9"#, 1),
            "mapped_blocks says",
        ),
        (
            good.replacen(r#"dev_id="2""#, r#"dev_id="1""#, 1),
            "a second device with this id",
        ),
        (good.replace(r#"time="0""#, r#"time="16777216""#), "24 bits"),
        ("hello".to_string(), "neither an XML dump"),
        (String::new(), "is empty"),
        ("{\"uuid\": 3}".to_string(), "not a thinpool JSON dump"),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let file = tp.put(&format!("bad{i}.xml"), text.as_bytes());
        let target = tp.file(&format!("r{i}"));
        let t = target.to_str().unwrap();
        thinpool(&["restore", t, "--input", &file]).fails(1, want);
        assert!(!target.exists(), "case {i}: {t} left behind");
        if !text.is_empty() {
            thinpool_in(&["restore", t, "--input", "-"], Some(text.as_bytes())).fails(1, want);
            assert!(!target.exists(), "case {i} from stdin: {t} left behind");
        }
        // A directory the user made is left, empty.
        std::fs::create_dir(&target).unwrap();
        thinpool(&["restore", t, "--input", &file]).fails(1, want);
        assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0, "case {i}");
        std::fs::remove_dir(&target).unwrap();
    }
}

#[test]
fn restore_refuses_a_short_data_file_small_metadata_and_a_taken_directory() {
    let tp = busy_pool();
    let xml = tp.put("pool.xml", &thinpool(&["dump", tp.p()]).ok().stdout);
    let target = tp.file("r");
    let t = target.to_str().unwrap();
    // A data file shorter than the dump's data device: not grown, not written.
    let short = tp.file("short");
    std::fs::write(&short, pattern(5, 1 << 20)).unwrap();
    let before = sha(&short);
    thinpool(&["restore", t, "-i", &xml, "--data", short.to_str().unwrap()])
        .fails(1, "holds 1048576 bytes, but the pool needs 67108864");
    assert_eq!(sha(&short), before);
    assert!(!target.exists());
    // A data file that does not exist.
    thinpool(&["restore", t, "-i", &xml, "--data", "/nonexistent/data"]).fails(1, "data file");
    assert!(!target.exists());
    // --block-size that disagrees with the dump.
    thinpool(&["restore", t, "-i", &xml, "--block-size", "4K"]).fails(1, "not the 4096");
    assert!(!target.exists());
    // The data file of a pool that is open: two pools must never share one.
    {
        let held =
            thinpool::pool::Pool::open(&tp.dir, &thinpool::pool::OpenOptions::default()).unwrap();
        let data = tp.dir.join("data");
        thinpool(&["restore", t, "-i", &xml, "--data", data.to_str().unwrap()])
            .fails(1, "is in use by another pool");
        assert!(!target.exists());
        drop(held);
    }
    // The pool's own directory, or any non-empty one, is not a target.
    thinpool(&["restore", tp.p(), "-i", &xml]).fails(1, "already exists");
    tp.check_clean();

    // Metadata too small for the mappings: the build runs out and says what to do.
    let mut big = String::from(
        r#"<superblock uuid="" time="0" transaction="1" flags="0" version="2" data_block_size="8" nr_data_blocks="1048576">
  <device dev_id="1" mapped_blocks="300000" transaction="0" creation_time="0" snap_time="0">
"#,
    );
    // Singles that never merge (every other data block): 300,000 mappings fill about 1,200
    // leaves, more than 4 MiB of metadata holds.
    for i in 0..300_000u64 {
        big.push_str(&format!(
            "    <single_mapping origin_block=\"{i}\" data_block=\"{}\" time=\"0\"/>\n",
            i * 2
        ));
    }
    big.push_str("  </device>\n</superblock>\n");
    let f = tp.put("big.xml", big.as_bytes());
    thinpool(&["restore", t, "-i", &f, "--metadata-size", "4M"]).fails(1, "larger --metadata-size");
    assert!(!target.exists());
    // With the estimated size it fits, and a dump gives back the same mappings.
    let rep = thinpool(&["restore", t, "-i", &f, "--json"]).ok().json();
    assert_eq!(rep["mappings"], 300_000);
    assert_eq!(rep["runs"], 300_000);
    thinpool(&["check", t]).ok();
    let again = thinpool(&["dump", t]).ok().text();
    assert_eq!(
        again.lines().skip(1).collect::<Vec<_>>(),
        big.lines().skip(1).collect::<Vec<_>>()
    );
}

#[test]
fn dump_refuses_the_pools_own_files_and_works_through_a_server() {
    let tp = busy_pool();
    let data = tp.dir.join("data");
    let sum = sha(&data);
    thinpool(&["dump", tp.p(), "-o", data.to_str().unwrap()]).fails(1, "this pool's data file");
    assert_eq!(sha(&data), sum);
    thinpool(&["dump", tp.p(), "--format", "yaml"]).fails(2, "invalid value");
    thinpool(&["dump", tp.file("nopool").to_str().unwrap()]).fails(1, "not a thinpool pool");
    let offline = thinpool(&["dump", tp.p()]).ok().text();

    // While `thinpool serve` holds the pool, dump goes through its control socket: to a
    // file (a relative path, resolved in the caller's directory), not to stdout.
    let mut serve = Command::new(common::BIN)
        .args(["serve", tp.p()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while std::os::unix::net::UnixStream::connect(tp.dir.join("control.sock")).is_err() {
        assert!(t0.elapsed().as_secs() < 20, "serve did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    thinpool(&["dump", tp.p()]).fails(1, "give --output FILE");
    let cwd = tp.tmp.path();
    common::thinpool_at(&["dump", tp.p(), "-o", "served.xml"], None, Some(cwd)).ok();
    let served = std::fs::read_to_string(cwd.join("served.xml")).unwrap();
    let body = |s: &str| s.lines().skip(1).map(str::to_string).collect::<Vec<_>>();
    assert_eq!(body(&served), body(&offline));
    Command::new("kill")
        .args(["-TERM", &serve.id().to_string()])
        .status()
        .unwrap();
    assert!(serve.wait().unwrap().success());
}
