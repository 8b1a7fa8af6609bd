//! Volume management: create, snapshot, list, info, remove, resize, rename, rollback.

mod common;
use common::*;
use serde_json::json;

const BS: usize = 4096;

#[test]
fn create_list_info() {
    let tp = TestPool::new("64M", "4K");
    let out = tp.run(&["create", "{}", "vm", "--size", "1G"]).ok();
    assert!(
        out.text().contains("created volume 'vm' (id 1, 1 GiB)"),
        "{}",
        out.text()
    );
    tp.run(&["create", "{}", "ro", "--size", "10M", "--read-only"])
        .ok();

    let list = tp.list();
    let vols = list.as_array().unwrap();
    assert_eq!(vols.len(), 2);
    let vm = &vols[0];
    assert_eq!(vm["name"], "vm");
    assert_eq!(vm["id"], 1);
    assert_eq!(vm["size"], 1u64 << 30);
    assert_eq!(vm["mapped_blocks"], 0);
    assert_eq!(vm["origin"], json!(null));
    assert_eq!(vm["read_only"], false);
    assert_eq!(vols[1]["read_only"], true);
    assert_eq!(vols[1]["size"], 10 << 20);

    // `info --json` is the same object as the `list --json` entry.
    assert_eq!(&tp.vol("vm"), vm);
    assert_eq!(tp.info()["volumes"], 2);
}

#[test]
fn list_and_info_json_key_sets() {
    let tp = TestPool::new("16M", "4K");
    tp.run(&["create", "{}", "a", "--size", "1M"]).ok();
    let expected = [
        "created",
        "exclusive_blocks",
        "id",
        "mapped_blocks",
        "name",
        "origin",
        "read_only",
        "shared_blocks",
        "size",
    ];
    let list = tp.list();
    assert!(list.is_array());
    assert_eq!(keys(&list[0]), expected);
    assert_eq!(keys(&tp.vol("a")), expected);
}

#[test]
fn empty_list() {
    let tp = TestPool::new("16M", "4K");
    assert_eq!(tp.list(), json!([]));
    let out = tp.run(&["list", "{}"]).ok().text();
    assert!(out.contains("no volumes"), "{out}");
}

#[test]
fn human_list_is_an_aligned_table() {
    let tp = TestPool::new("16M", "4K");
    tp.run(&["create", "{}", "vm", "--size", "1G"]).ok();
    tp.run(&["snapshot", "{}", "vm", "a-much-longer-snapshot-name"])
        .ok();
    let out = tp.run(&["list", "{}"]).ok().text();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("NAME "), "{out}");
    for col in [
        "ID",
        "SIZE",
        "MAPPED",
        "EXCLUSIVE",
        "SHARED",
        "ORIGIN",
        "RO",
    ] {
        assert!(lines[0].contains(col), "{out}");
    }
    // Right-aligned SIZE column: every row ends the size at the same character.
    let end = lines[0].find("SIZE").unwrap() + "SIZE".len();
    for l in &lines[1..] {
        assert_eq!(&l[end - 3..end], "GiB", "misaligned:\n{out}");
    }
    assert!(lines[2].contains(" vm "), "origin missing:\n{out}");
}

#[test]
fn human_info() {
    let tp = TestPool::new("16M", "4K");
    tp.run(&["create", "{}", "vm", "--size", "1536M"]).ok();
    let out = tp.run(&["info", "{}", "vm"]).ok().text();
    for needle in [
        "name:",
        "vm",
        "1.5 GiB (1610612736 bytes)",
        "mapped:",
        "0 blocks",
        "origin:",
        "read-only: no",
        "created:",
        "UTC",
    ] {
        assert!(out.contains(needle), "{needle:?} missing:\n{out}");
    }
}

#[test]
fn snapshot_shares_blocks_until_overwritten() {
    let tp = TestPool::new("64M", "4K");
    tp.run(&["create", "{}", "vm", "--size", "1M"]).ok();
    let v1 = pattern(1, 4 * BS);
    let f = tp.put("v1", &v1);
    tp.run(&["write", "{}", "vm", &f]).ok();
    let used = tp.info()["data_blocks_used"].as_u64().unwrap();
    assert_eq!(used, 4);

    let out = tp.run(&["snapshot", "{}", "vm", "snap"]).ok();
    assert!(
        out.text().contains("snapshot 'snap' of 'vm'"),
        "{}",
        out.text()
    );
    // O(1): no data block copied.
    assert_eq!(tp.info()["data_blocks_used"], 4);
    let s = tp.vol("snap");
    assert_eq!(s["origin"], "vm");
    assert_eq!(s["mapped_blocks"], 4);
    assert_eq!(s["shared_blocks"], 4);
    assert_eq!(s["exclusive_blocks"], 0);
    assert_eq!(s["read_only"], false);

    let f2 = tp.put("v2", &pattern(2, BS));
    tp.run(&["write", "{}", "vm", "--offset", "8K", &f2]).ok();
    assert_eq!(tp.info()["data_blocks_used"], 5);
    let vm = tp.vol("vm");
    assert_eq!(
        (
            vm["exclusive_blocks"].as_u64(),
            vm["shared_blocks"].as_u64()
        ),
        (Some(1), Some(3))
    );
    assert_eq!(tp.read("snap", 0, 4 * BS as u64), v1);
    let mut expect = v1.clone();
    expect[2 * BS..3 * BS].copy_from_slice(&pattern(2, BS));
    assert_eq!(tp.read("vm", 0, 4 * BS as u64), expect);
}

#[test]
fn read_only_snapshot_refuses_writes() {
    let tp = TestPool::new("16M", "4K");
    tp.run(&["create", "{}", "vm", "--size", "1M"]).ok();
    tp.run(&["snapshot", "{}", "vm", "ro", "--read-only"]).ok();
    assert_eq!(tp.vol("ro")["read_only"], true);
    let f = tp.put("x", b"data");
    let before = tp.state();
    tp.run(&["write", "{}", "ro", &f]).fails(1, "read-only");
    tp.run(&["discard", "{}", "ro"]).fails(1, "read-only");
    tp.run(&["resize", "{}", "ro", "--size", "2M"])
        .fails(1, "read-only");
    assert_eq!(tp.state(), before);
}

#[test]
fn remove_frees_only_unshared_blocks() {
    let tp = TestPool::new("16M", "4K");
    tp.run(&["create", "{}", "vm", "--size", "1M"]).ok();
    let f = tp.put("d", &pattern(3, 8 * BS));
    tp.run(&["write", "{}", "vm", &f]).ok();
    tp.run(&["snapshot", "{}", "vm", "s"]).ok();
    let f2 = tp.put("d2", &pattern(4, 2 * BS));
    tp.run(&["write", "{}", "vm", &f2]).ok();
    assert_eq!(tp.info()["data_blocks_used"], 10);

    let out = tp.run(&["remove", "{}", "s"]).ok();
    assert!(out.text().contains("2 data blocks freed"), "{}", out.text());
    assert_eq!(tp.info()["data_blocks_used"], 8);
    let vm = tp.vol("vm");
    assert_eq!(vm["exclusive_blocks"], 8);
    assert_eq!(vm["origin"], json!(null));

    tp.run(&["remove", "{}", "vm"]).ok();
    assert_eq!(tp.info()["data_blocks_used"], 0);
    assert_eq!(tp.list(), json!([]));
    tp.check_clean();
}

#[test]
fn resize_grows_and_shrinks() {
    let tp = TestPool::new("16M", "4K");
    tp.run(&["create", "{}", "vm", "--size", "64K"]).ok();
    let f = tp.put("d", &pattern(5, 64 << 10));
    tp.run(&["write", "{}", "vm", &f]).ok();

    let out = tp.run(&["resize", "{}", "vm", "--size", "1M"]).ok();
    assert!(
        out.text().contains("from 64 KiB to 1 MiB"),
        "{}",
        out.text()
    );
    assert_eq!(tp.vol("vm")["size"], 1 << 20);
    assert_eq!(tp.read("vm", 0, 64 << 10), pattern(5, 64 << 10));
    assert_eq!(tp.read("vm", 64 << 10, 4096), vec![0; 4096]);

    // Shrink to a non-block-aligned size, then grow: the dropped bytes read as zeros.
    tp.run(&["resize", "{}", "vm", "--size", "10000"]).ok();
    assert_eq!(tp.vol("vm")["size"], 10000);
    assert_eq!(tp.vol("vm")["mapped_blocks"], 3);
    tp.run(&["read", "{}", "vm", "--offset", "9999", "--length", "2"])
        .fails(1, "outside volume");
    tp.run(&["resize", "{}", "vm", "--size", "64K"]).ok();
    let back = tp.read("vm", 0, 64 << 10);
    assert_eq!(&back[..10000], &pattern(5, 64 << 10)[..10000]);
    assert!(back[10000..].iter().all(|&b| b == 0));

    let before = tp.state();
    tp.run(&["resize", "{}", "vm", "--size", "0"])
        .fails(1, "greater than zero");
    assert_eq!(tp.state(), before);
    tp.check_clean();
}

#[test]
fn rename_moves_name_and_data() {
    let tp = TestPool::new("16M", "4K");
    tp.run(&["create", "{}", "old", "--size", "1M"]).ok();
    tp.run(&["create", "{}", "other", "--size", "1M"]).ok();
    let f = tp.put("d", b"hello rename");
    tp.run(&["write", "{}", "old", &f]).ok();
    let id = tp.vol("old")["id"].clone();

    tp.run(&["rename", "{}", "old", "new"]).ok();
    tp.run(&["info", "{}", "old"])
        .fails(1, "no volume named 'old'");
    assert_eq!(tp.vol("new")["id"], id);
    assert_eq!(tp.read("new", 0, 12), b"hello rename");

    let before = tp.state();
    tp.run(&["rename", "{}", "new", "other"])
        .fails(1, "already exists");
    tp.run(&["rename", "{}", "new", "a/b"])
        .fails(1, "invalid volume name");
    assert_eq!(tp.state(), before);
}

#[test]
fn rollback_restores_the_snapshot() {
    let tp = TestPool::new("16M", "4K");
    tp.run(&["create", "{}", "vm", "--size", "1M"]).ok();
    let orig = pattern(6, 3 * BS);
    let f = tp.put("orig", &orig);
    tp.run(&["write", "{}", "vm", &f]).ok();
    tp.run(&["snapshot", "{}", "vm", "s1", "--read-only"]).ok();
    let f2 = tp.put("new", &pattern(7, 5 * BS));
    tp.run(&["write", "{}", "vm", &f2]).ok();
    tp.run(&["resize", "{}", "vm", "--size", "2M"]).ok();

    let out = tp.run(&["rollback", "{}", "vm", "s1"]).ok();
    assert!(
        out.text().contains("rolled 'vm' back to snapshot 's1'"),
        "{}",
        out.text()
    );
    let vm = tp.vol("vm");
    assert_eq!(vm["size"], 1 << 20);
    assert_eq!(vm["mapped_blocks"], 3);
    assert_eq!(vm["shared_blocks"], 3);
    assert_eq!(vm["read_only"], false);
    assert_eq!(tp.read("vm", 0, 5 * BS as u64)[..3 * BS], orig[..]);
    assert_eq!(tp.read("vm", 3 * BS as u64, 2 * BS as u64), vec![0; 2 * BS]);
    // The blocks only the rolled-back state used are free again.
    assert_eq!(tp.info()["data_blocks_used"], 3);

    // Only a snapshot descending from the volume will do.
    tp.run(&["create", "{}", "unrelated", "--size", "1M"]).ok();
    let before = tp.state();
    tp.run(&["rollback", "{}", "vm", "unrelated"])
        .fails(1, "not a snapshot of 'vm'");
    tp.run(&["rollback", "{}", "s1", "vm"])
        .fails(1, "read-only");
    assert_eq!(tp.state(), before);
    tp.check_clean();
}

#[test]
fn snapshot_of_snapshot_chain() {
    let tp = TestPool::new("16M", "4K");
    tp.run(&["create", "{}", "base", "--size", "1M"]).ok();
    tp.run(&["write", "{}", "base", &tp.put("a", &pattern(8, BS))])
        .ok();
    tp.run(&["snapshot", "{}", "base", "s1"]).ok();
    tp.run(&["snapshot", "{}", "s1", "s2"]).ok();
    assert_eq!(tp.vol("s2")["origin"], "s1");
    // A grandchild snapshot still counts as a snapshot of `base` for rollback.
    tp.run(&["write", "{}", "base", &tp.put("b", &pattern(9, BS))])
        .ok();
    tp.run(&["rollback", "{}", "base", "s2"]).ok();
    assert_eq!(tp.read("base", 0, BS as u64), pattern(8, BS));
}

/// An rbd diff v1 stream that ends at snapshot `to` and writes `data` at offset 0.
fn diff_to_snapshot(to: &str, data: &[u8]) -> Vec<u8> {
    let mut d = b"rbd diff v1\n".to_vec();
    d.push(b't');
    d.extend_from_slice(&(to.len() as u32).to_le_bytes());
    d.extend_from_slice(to.as_bytes());
    d.push(b'w');
    d.extend_from_slice(&0u64.to_le_bytes());
    d.extend_from_slice(&(data.len() as u64).to_le_bytes());
    d.extend_from_slice(data);
    d.push(b'e');
    d
}

/// A name with a control character (which would fake `list` rows or send terminal escapes)
/// or a bidi override (which reorders the text around it) is refused wherever a new name is
/// accepted, with the character escaped and its byte offset; nothing is created, nothing
/// changes, and `list` still works.
#[test]
fn names_with_control_characters_are_refused() {
    let tp = TestPool::new("16M", "4K");
    tp.run(&["create", "{}", "vol", "--size", "1M"]).ok();
    let before = tp.state();
    let img = tp.put("img", &[7u8; 4096]);
    let bad = [
        ("a\nb", "\\n at byte 1"),
        ("a\x1b[31m", "\\x1b at byte 1"),
        ("a\u{202e}b", "U+202E at byte 1"),
        ("ab\tc", "\\t at byte 2"),
        ("a\x7f", "\\x7f at byte 1"),
        ("é\u{85}", "U+0085 at byte 2"),
        ("x\u{2067}", "U+2067 at byte 1"),
        ("a/b", "'/' at byte 1"),
    ];
    for (name, needle) in bad {
        let diff = tp.put("diff", &diff_to_snapshot(name, &[9u8; 4096]));
        for args in [
            vec!["create", "{}", name, "--size", "1M"],
            vec!["snapshot", "{}", "vol", name],
            vec!["rename", "{}", "vol", name],
            vec!["import", "{}", name, &img],
            vec!["import-diff", "{}", "vol", &diff],
        ] {
            let out = tp.run(&args).fails(1, needle);
            assert!(
                out.stderr.contains("control characters"),
                "{args:?}: the message does not state the rule: {}",
                out.stderr
            );
            if name != "a/b" {
                assert!(
                    !out.stderr.contains(name),
                    "{args:?}: the message repeats the raw name: {:?}",
                    out.stderr
                );
            }
            assert_eq!(tp.state(), before, "{args:?} changed the pool");
        }
    }
    assert_eq!(tp.read("vol", 0, 4096), vec![0u8; 4096]);
    assert_eq!(tp.run(&["list", "{}"]).ok().text().lines().count(), 2);
    // Everything else stays a name: UTF-8 letters, spaces, punctuation, a leading '-'.
    for name in ["café", "日本語", "my disk", "-x", "a.b+c_d=e~!", "\u{200d}"] {
        tp.run(&["create", "{}", "--size", "1M", "--", name]).ok();
    }
}
