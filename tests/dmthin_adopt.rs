//! `thinpool adopt` (issue 12): dm-thin metadata written by Debian's `thin_restore` from the
//! XML fixtures in `fixtures/dmthin/`, plus a data file with known contents, become a
//! thinpool pool whose volumes read what the fixture maps; the dm-thin metadata is not
//! touched, damaged metadata is refused, and a failed adoption leaves nothing behind.

mod common;

use common::thinpool;
use common::tools::have_tools;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use thinpool::dmthin::model::{Collect, PoolDump};
use thinpool::pool::{OpenOptions, Pool};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/dmthin")
        .join(name)
}

fn parse(xml: &Path) -> PoolDump {
    let mut c = Collect::default();
    let f = std::io::BufReader::new(std::fs::File::open(xml).unwrap());
    thinpool::dmthin::xml::read_xml(f, "fixture", &mut c).unwrap();
    c.dump.unwrap()
}

/// What data block `b` holds at its start and at its end.
fn tag(b: u64) -> Vec<u8> {
    format!("data block {b:>10} ")
        .repeat(512 / 22 + 1)
        .as_bytes()[..512]
        .to_vec()
}

/// A dm-thin pool on files: metadata by `thin_restore` from `xml`, a sparse data file whose
/// every mapped block carries its tag at both ends.
struct DmPool {
    tmp: tempfile::TempDir,
    meta: PathBuf,
    data: PathBuf,
    dump: PoolDump,
    bs: u64,
}

impl DmPool {
    fn new(xml: &Path) -> DmPool {
        let tmp = tempfile::tempdir().unwrap();
        let meta = tmp.path().join("metadata");
        let data = tmp.path().join("data");
        std::fs::File::create(&meta)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
        let o = Command::new("thin_restore")
            .arg("-i")
            .arg(xml)
            .arg("-o")
            .arg(&meta)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "thin_restore: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let dump = parse(xml);
        let bs = dump.data_block_size as u64 * 512;
        let f = std::fs::File::create(&data).unwrap();
        f.set_len(dump.nr_data_blocks * bs).unwrap();
        for d in &dump.devices {
            for r in &d.mappings {
                for b in r.data_begin..r.data_begin + r.length {
                    f.write_all_at(&tag(b), b * bs).unwrap();
                    f.write_all_at(&tag(b), (b + 1) * bs - 512).unwrap();
                }
            }
        }
        DmPool {
            tmp,
            meta,
            data,
            dump,
            bs,
        }
    }

    fn adopt(&self, pool: &Path, extra: &[&str]) -> common::Out {
        let mut args = vec![
            "adopt",
            pool.to_str().unwrap(),
            "--dm-metadata",
            self.meta.to_str().unwrap(),
            "--dm-data",
            self.data.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        thinpool(&args)
    }
}

fn file_sum(p: &Path) -> Vec<u8> {
    Command::new("sha256sum").arg(p).output().unwrap().stdout
}

/// Every mapped block of every device reads its data block's tags; the block after each run
/// (when unmapped) reads zeros.
fn assert_reads_as_mapped(pool: &Path, dm: &DmPool) {
    let mut p = Pool::open(
        pool,
        &OpenOptions {
            read_only: true,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    let mut buf = vec![0u8; 512];
    for d in &dm.dump.devices {
        let id = p.volume_id(&d.dev_id.to_string()).unwrap();
        let mapped: std::collections::HashSet<u64> = d
            .mappings
            .iter()
            .flat_map(|r| r.origin_begin..r.origin_begin + r.length)
            .collect();
        for r in &d.mappings {
            for i in 0..r.length {
                let (vb, b) = (r.origin_begin + i, r.data_begin + i);
                p.read(id, vb * dm.bs, &mut buf).unwrap();
                assert_eq!(buf, tag(b), "device {} block {vb}", d.dev_id);
                p.read(id, (vb + 1) * dm.bs - 512, &mut buf).unwrap();
                assert_eq!(buf, tag(b), "device {} end of block {vb}", d.dev_id);
            }
            let after = r.origin_begin + r.length;
            let size = p.details(id).unwrap().size;
            if !mapped.contains(&after) && (after + 1) * dm.bs <= size {
                p.read(id, after * dm.bs, &mut buf).unwrap();
                assert!(
                    buf.iter().all(|&x| x == 0),
                    "device {} block {after}",
                    d.dev_id
                );
            }
        }
    }
}

#[test]
fn adopted_fixtures_read_what_they_map_and_the_dm_metadata_is_untouched() {
    if !have_tools(&["thin_restore"]) {
        return;
    }
    for name in ["snapshots.xml", "deep.xml"] {
        let dm = DmPool::new(&fixture(name));
        let meta_sum = file_sum(&dm.meta);
        let data_len = std::fs::metadata(&dm.data).unwrap().len();
        let pool = dm.tmp.path().join("pool");
        let rep = dm.adopt(&pool, &["--json"]).ok().json();
        assert_eq!(rep["volumes"], dm.dump.devices.len(), "{name}");
        let mappings: u64 = dm.dump.devices.iter().map(|d| d.mapped_blocks).sum();
        assert_eq!(rep["mappings"], mappings, "{name}");
        assert_eq!(
            file_sum(&dm.meta),
            meta_sum,
            "{name}: the dm-thin metadata changed"
        );
        assert_eq!(std::fs::metadata(&dm.data).unwrap().len(), data_len);
        assert_eq!(
            std::fs::read_link(pool.join("data")).unwrap(),
            std::fs::canonicalize(&dm.data).unwrap()
        );
        thinpool(&["check", pool.to_str().unwrap()]).ok();
        assert_reads_as_mapped(&pool, &dm);
        // thinpool's own dump of the adopted pool is the fixture (but for the superblock
        // line and creation_time, which thinpool does not keep: docs/dmthin.md).
        let ours = thinpool(&["dump", pool.to_str().unwrap()]).ok().text();
        let body = |s: &str| -> Vec<String> {
            s.lines()
                .skip(1)
                .map(|l| {
                    let mut l = l.to_string();
                    if let Some(i) = l.find(" creation_time=\"") {
                        let j = l[i + 16..].find('"').unwrap() + i + 17;
                        l.replace_range(i..j, "");
                    }
                    l
                })
                .collect()
        };
        let want = std::fs::read_to_string(fixture(name)).unwrap();
        assert_eq!(body(&ours), body(&want), "{name}");
    }
}

#[test]
fn an_adopted_snapshot_keeps_its_blocks_when_its_origin_is_written() {
    if !have_tools(&["thin_restore"]) {
        return;
    }
    let dm = DmPool::new(&fixture("snapshots.xml"));
    let pool = dm.tmp.path().join("pool");
    let names = dm.tmp.path().join("names");
    std::fs::write(
        &names,
        "# dev_id name size\n0 origin 200M\n1 snap\n\n9 empty 1M # unused\n",
    )
    .unwrap();
    dm.adopt(&pool, &["--names", names.to_str().unwrap()]).ok();
    let p = pool.to_str().unwrap();
    let list = thinpool(&["list", p, "--json"]).ok().json();
    let by_name = |n: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == n)
            .cloned()
            .unwrap()
    };
    assert_eq!(by_name("origin")["size"], 200 << 20);
    assert_eq!(by_name("empty")["size"], 1 << 20);
    assert_eq!(by_name("7")["mapped_blocks"], 40);
    // Virtual block 0 is shared by origin and snap (data block 0): a write to the origin
    // copies it; the snapshot still reads data block 0.
    let x = dm.tmp.path().join("x");
    std::fs::write(&x, vec![0xabu8; 4096]).unwrap();
    thinpool(&["write", p, "origin", x.to_str().unwrap()]).ok();
    let snap0 = thinpool(&["read", p, "snap", "--length", "512"])
        .ok()
        .stdout;
    assert_eq!(snap0, tag(0));
    let origin0 = thinpool(&["read", p, "origin", "--length", "4096"])
        .ok()
        .stdout;
    assert_eq!(origin0, vec![0xabu8; 4096]);
    thinpool(&["check", p]).ok();
}

#[test]
fn damaged_or_wrong_dm_metadata_is_refused_and_nothing_is_left() {
    if !have_tools(&["thin_restore"]) {
        return;
    }
    let dm = DmPool::new(&fixture("snapshots.xml"));
    let good = std::fs::read(&dm.meta).unwrap();
    let sb_u64 = |o: usize| u64::from_le_bytes(good[o..o + 8].try_into().unwrap());
    let (mapping_root, details_root) = (sb_u64(320), sb_u64(328));
    let pool = dm.tmp.path().join("pool");
    let flip = |at: usize| {
        let mut m = good.clone();
        m[at] ^= 0x40;
        m
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (flip(32), "fails its checksum"),
        (
            flip(mapping_root as usize * 4096 + 100),
            "fails its checksum",
        ),
        (
            flip(details_root as usize * 4096 + 40),
            "fails its checksum",
        ),
        (vec![0u8; 1 << 20], "fails its checksum"),
        (good[..2000].to_vec(), "too short"),
        (good[..4096 * 3].to_vec(), "the superblock says"),
    ];
    for (i, (bytes, want)) in cases.iter().enumerate() {
        std::fs::write(&dm.meta, bytes).unwrap();
        dm.adopt(&pool, &[]).fails(1, want);
        assert!(!pool.exists(), "case {i} left {}", pool.display());
        assert_eq!(
            &std::fs::read(&dm.meta).unwrap(),
            bytes,
            "case {i} wrote the metadata"
        );
    }
    std::fs::write(&dm.meta, &good).unwrap();

    // A data file too short for the pool: not grown, refused.
    let short = dm.tmp.path().join("short");
    std::fs::write(&short, b"x").unwrap();
    let m = dm.meta.to_str().unwrap();
    thinpool(&[
        "adopt",
        pool.to_str().unwrap(),
        "--dm-metadata",
        m,
        "--dm-data",
        short.to_str().unwrap(),
    ])
    .fails(1, "holds 1 bytes");
    assert_eq!(std::fs::metadata(&short).unwrap().len(), 1);
    thinpool(&[
        "adopt",
        pool.to_str().unwrap(),
        "--dm-metadata",
        m,
        "--dm-data",
        m,
    ])
    .fails(1, "the same file");
    // Names files that do not fit the pool.
    let names = dm.tmp.path().join("names");
    for (text, want) in [
        ("5 ghost\n", "does not have"),
        ("0 a\n0 b\n", "named twice"),
        ("zero a\n", "not a device id"),
        ("0 a 1X\n", "line 1"),
        ("0 a b c\n", "expected `DEV_ID NAME [SIZE]`"),
        ("0 a\n1 a\n", "a second device named 'a'"),
        ("0 a 64K\n", "smaller than its mappings"),
    ] {
        std::fs::write(&names, text).unwrap();
        dm.adopt(&pool, &["--names", names.to_str().unwrap()])
            .fails(1, want);
        assert!(!pool.exists(), "{text:?}");
    }
    // With the metadata restored, it adopts.
    dm.adopt(&pool, &[]).ok();
    // Superblock flagged by the kernel as needing a check: dm-thin's own checksum made
    // valid again, so only the flag refuses it.
    let mut flagged = good.clone();
    flagged[4] |= 1;
    let csum = !crc32c::crc32c(&flagged[4..4096]) ^ 160_774;
    flagged[..4].copy_from_slice(&csum.to_le_bytes());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&dm.meta)
        .unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(&flagged[..4096]).unwrap();
    drop(f);
    let pool2 = dm.tmp.path().join("pool2");
    dm.adopt(&pool2, &[]).fails(1, "needing a check");
    assert!(!pool2.exists());
}
