//! Progress bars (check, export, diff, dump, restore, repair, crashtest): drawn on a terminal (a pty from `script`),
//! never with `--json` or when stdout or stderr is not a terminal.

mod common;
use common::tools::have_tools;
use common::*;
use std::process::Command;

/// Run `thinpool ARGS` on a pty (util-linux `script`); everything it drew, as text.
fn on_tty(args: &[&str]) -> String {
    let line = std::iter::once(BIN)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let out = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{line}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn check_and_export_draw_bars_on_a_terminal_only() {
    if !have_tools(&["script"]) {
        return;
    }
    let tp = TestPool::new("256M", "4K");
    tp.run(&["create", "{}", "v", "--size", "16M"]).ok();
    let f = tp.put("data", &pattern(1, 8 << 20));
    tp.run(&["write", "{}", "v", &f]).ok();
    let pool = tp.dir.to_str().unwrap().to_string();
    let image = tp.tmp.path().join("v.img");
    let img = image.to_str().unwrap();

    let drawn = on_tty(&["check", &pool]);
    assert!(
        drawn.contains("check [") && drawn.contains("metadata blocks"),
        "{drawn:?}"
    );
    assert!(
        drawn.contains("no errors") || drawn.contains("clean"),
        "{drawn:?}"
    );
    let drawn = on_tty(&["export", &pool, "v", img]);
    assert!(
        drawn.contains("export [") || drawn.contains("export v ["),
        "{drawn:?}"
    );
    std::fs::remove_file(&image).unwrap();
    tp.run(&["snapshot", "{}", "v", "s"]).ok();
    tp.run(&["write", "{}", "v", &f, "--offset", "4M"]).ok();
    let drawn = on_tty(&["diff", &pool, "s", "v"]);
    assert!(drawn.contains("diff ["), "{drawn:?}");
    let drawn = on_tty(&["diff", &pool, "s", "v", "--json"]);
    assert!(!drawn.contains("diff ["), "{drawn:?}");
    let xml = tp.tmp.path().join("pool.xml");
    let x = xml.to_str().unwrap();
    let drawn = on_tty(&["dump", &pool, "--output", x]);
    assert!(
        drawn.contains("dump [") && drawn.contains("mappings"),
        "{drawn:?}"
    );
    let restored = tp.tmp.path().join("restored");
    let drawn = on_tty(&["restore", restored.to_str().unwrap(), "--input", x]);
    assert!(
        drawn.contains("restore [") && drawn.contains("mappings"),
        "{drawn:?}"
    );
    let out = tp.run(&["dump", "{}", "--output", x]).ok();
    assert_eq!(out.stderr, "");

    // --json: the document only.
    let drawn = on_tty(&["check", &pool, "--json"]);
    assert!(!drawn.contains("check ["), "{drawn:?}");
    let json: serde_json::Value = serde_json::from_str(drawn.trim()).unwrap();
    assert_eq!(json["clean"], true);
    // Pipes: nothing on stderr.
    let out = tp.run(&["check", "{}"]).ok();
    assert_eq!(out.stderr, "");
    let out = tp.run(&["export", "{}", "v", img]).ok();
    assert_eq!(out.stderr, "");
}

#[test]
fn repair_and_crashtest_draw_bars_on_a_terminal_only() {
    if !have_tools(&["script"]) {
        return;
    }
    let tp = TestPool::new("64M", "4K");
    tp.run(&["create", "{}", "v", "--size", "8M"]).ok();
    let f = tp.put("data", &pattern(2, 2 << 20));
    tp.run(&["write", "{}", "v", &f]).ok();
    let pool = tp.dir.to_str().unwrap().to_string();
    let drawn = on_tty(&["repair", &pool]);
    assert!(
        drawn.contains("repair [") && drawn.contains("mappings"),
        "{drawn:?}"
    );
    assert!(drawn.contains("repaired from seq"), "{drawn:?}");
    let drawn = on_tty(&["repair", &pool, "--json"]);
    assert!(!drawn.contains("repair ["), "{drawn:?}");
    let json: serde_json::Value = serde_json::from_str(drawn.trim()).unwrap();
    assert_eq!(json["volumes"], 1);

    let drawn = on_tty(&[
        "crashtest",
        "--seeds",
        "2",
        "--ops",
        "30",
        "--states",
        "200",
    ]);
    assert!(
        drawn.contains("crashtest [") && drawn.contains("ops"),
        "{drawn:?}"
    );
    assert!(drawn.contains("seed 1:"), "{drawn:?}");
    let kill = tp.tmp.path().join("kill");
    let drawn = on_tty(&[
        "crashtest",
        "--kill",
        kill.to_str().unwrap(),
        "--rounds",
        "2",
    ]);
    assert!(
        drawn.contains("crashtest --kill [") && drawn.contains("rounds"),
        "{drawn:?}"
    );
    // Pipes: nothing on stderr.
    let out = thinpool(&["crashtest", "--seeds", "1", "--ops", "10", "--states", "50"]).ok();
    assert_eq!(out.stderr, "");
}
