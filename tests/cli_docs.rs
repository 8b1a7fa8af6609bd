//! Shell completions and manual pages come from the clap definitions: every command is in
//! them, the bash script parses, and the pages are well-formed roff.

mod common;
use common::*;
use std::process::Command;

/// Every command `thinpool --help` lists (but `help`).
fn commands() -> Vec<String> {
    let help = thinpool(&["--help"]).ok().text();
    let list = help
        .split("Commands:")
        .nth(1)
        .expect("a command list")
        .split("Options:")
        .next()
        .unwrap()
        .to_string();
    let names: Vec<String> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n != "help")
        .map(str::to_string)
        .collect();
    assert!(
        names.len() > 25 && names.iter().any(|n| n == "sync"),
        "{names:?}"
    );
    names
}

#[test]
fn completion_scripts_name_every_command_and_bash_parses_its_own() {
    let cmds = commands();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = thinpool(&["completions", shell]).ok().text();
        for c in &cmds {
            assert!(script.contains(c.as_str()), "{shell}: no '{c}'");
        }
        if shell == "bash" {
            let dir = tempfile::tempdir().unwrap();
            let f = dir.path().join("thinpool.bash");
            std::fs::write(&f, &script).unwrap();
            let st = Command::new("bash").arg("-n").arg(&f).status().unwrap();
            assert!(st.success(), "bash -n rejects the script");
            // Sourced, it registers a completion for `thinpool`.
            let out = Command::new("bash")
                .arg("-c")
                .arg(format!("source {} && complete -p thinpool", f.display()))
                .output()
                .unwrap();
            assert!(
                String::from_utf8_lossy(&out.stdout).contains("thinpool"),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    thinpool(&["completions", "tcsh"]).fails(2, "invalid value");
}

#[test]
fn manual_pages_cover_every_command_and_never_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man");
    let o = out.to_str().unwrap();
    thinpool(&["manpages", o]).ok();
    for c in commands() {
        let page = out.join(format!("thinpool-{c}.1"));
        let text = std::fs::read_to_string(&page).unwrap_or_else(|e| panic!("{c}: {e}"));
        assert!(
            text.contains(".TH thinpool-") && text.contains(".SH SYNOPSIS"),
            "{c}"
        );
    }
    // `pool` has pages for its own subcommands too.
    assert!(out.join("thinpool-pool-create.1").exists());
    let top = std::fs::read_to_string(out.join("thinpool.1")).unwrap();
    assert!(top.contains(".SH SUBCOMMANDS"));
    // A second run into the same (now full) directory refuses and changes nothing.
    let before = std::fs::read(out.join("thinpool.1")).unwrap();
    thinpool(&["manpages", o]).fails(1, "not empty");
    assert_eq!(std::fs::read(out.join("thinpool.1")).unwrap(), before);
}
