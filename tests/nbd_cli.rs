//! The real `thinpool serve` binary with management commands from other processes: they go
//! through the control socket and run between NBD requests.

#[path = "common/nbd.rs"]
mod nbd_util;
#[path = "common/serve.rs"]
mod serve;
use nbd_util::raw::Raw;
use nbd_util::*;
use std::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_thinpool");

fn thinpool(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

#[test]
fn management_while_serving() {
    let t = make_pool(&[("vol", 8 * MIB)], 64 << 10);
    let dir = pool_dir(&t);
    let d = dir.to_str().unwrap();
    let child = serve::spawn(&dir, &[], &[], None);
    let sock = dir.join("nbd.sock");

    // A second server on the same pool is refused.
    let o = thinpool(&["serve", d]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("in use"));

    let mut c = Raw::attach(&sock, "vol", false);
    assert_eq!(c.write(1, 3000, &[0x61; 200_000]), 0);
    let o = thinpool(&["snapshot", d, "vol", "before"]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(c.write(2, 3000, &[0x62; 200_000]), 0);
    let o = thinpool(&["create", d, "extra", "-s", "1M"]);
    assert!(o.status.success(), "{o:?}");
    let o = thinpool(&["list", d, "--json"]);
    assert!(o.status.success(), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["vol", "before", "extra"]);

    // The snapshot holds exactly what was written before it.
    let mut s = Raw::attach(&sock, "before", false);
    assert_eq!(s.read(1, 3000, 200_000).unwrap(), vec![0x61; 200_000]);
    assert_eq!(s.read(2, 0, 3000).unwrap(), vec![0; 3000]);
    assert_eq!(c.read(3, 3000, 200_000).unwrap(), vec![0x62; 200_000]);

    // Removing an attached volume is refused with a clear message.
    let o = thinpool(&["remove", d, "vol"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("attached"), "{err}");
    let o = thinpool(&["remove", d, "extra"]);
    assert!(o.status.success(), "{o:?}");

    // SIGTERM: clean exit, sockets gone, completed writes durable.
    assert_eq!(c.write(4, 0, &[0x63; 1000]), 0);
    let st = serve::sigterm(child);
    assert!(st.success(), "{st:?}");
    assert!(!sock.exists() && !dir.join("control.sock").exists());
    let o = thinpool(&["read", d, "vol", "--length", "1000", "-"]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(o.stdout, vec![0x63; 1000]);
}

/// The attached-volume guard looks at the parsed command, not at argv: a volume whose name
/// starts with '-' (given after `--`) is protected like any other, for `remove` and for
/// `rollback`, with the same message; `--force` still overrides.
#[test]
fn attached_volume_named_like_an_option_is_guarded() {
    let t = make_pool(&[("-x", MIB), ("vol", MIB)], 64 << 10);
    let dir = pool_dir(&t);
    let d = dir.to_str().unwrap();
    // Killed if an assertion fails, so a failing run leaves no server behind.
    struct Serving(Option<Child>);
    impl Drop for Serving {
        fn drop(&mut self) {
            if let Some(c) = self.0.as_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let mut serving = Serving(Some(serve::spawn(&dir, &[], &[], None)));
    let sock = dir.join("nbd.sock");
    let o = thinpool(&["snapshot", d, "--", "-x", "-x-snap"]);
    assert!(o.status.success(), "{o:?}");
    let o = thinpool(&["snapshot", d, "vol", "vol-snap"]);
    assert!(o.status.success(), "{o:?}");
    let mut dashed = Raw::attach(&sock, "-x", false);
    let mut plain = Raw::attach(&sock, "vol", false);

    let refused = |args: &[&str]| -> String {
        let o = thinpool(args);
        assert_eq!(o.status.code(), Some(1), "{args:?} was not refused: {o:?}");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let want = refused(&["remove", d, "vol"]);
    assert!(
        want.contains("attached") && want.contains("--force"),
        "{want}"
    );
    assert_eq!(
        refused(&["remove", d, "--", "-x"]),
        want.replace("'vol'", "'-x'")
    );
    let want = refused(&["rollback", d, "vol", "vol-snap"]);
    assert!(want.contains("attached"), "{want}");
    assert_eq!(
        refused(&["rollback", d, "--", "-x", "-x-snap"]),
        want.replace("'vol'", "'-x'")
    );

    // Both volumes are still there and still served.
    let o = thinpool(&["list", d, "--json"]);
    assert!(o.status.success(), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["-x", "vol", "-x-snap", "vol-snap"]);
    assert_eq!(dashed.write(1, 0, &[0x2d; 4096]), 0);
    assert_eq!(plain.write(2, 0, &[0x76; 4096]), 0);

    // --force still overrides, wherever it is given.
    let o = thinpool(&["remove", d, "--force", "--", "-x"]);
    assert!(o.status.success(), "{o:?}");
    assert!(dashed.read(3, 0, 512).is_err());
    let st = serve::sigterm(serving.0.take().unwrap());
    assert!(st.success(), "{st:?}");
}
