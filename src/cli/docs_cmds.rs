//! Shell completions and manual pages, generated from the clap definitions themselves
//! (`clap_complete`, `clap_mangen`), so they never drift from `--help`.

use super::Cli;
use anyhow::{Context, Result};
use clap::{Args, CommandFactory};
use std::io::Write;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// Shell to write the script for
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub struct ManpagesArgs {
    /// Directory for the pages (created; must be new or empty): thinpool.1 and one
    /// thinpool-COMMAND.1 per command
    pub dir: PathBuf,
}

/// `thinpool completions SHELL`: the script on stdout, e.g.
/// `thinpool completions bash > /etc/bash_completion.d/thinpool`.
pub fn completions(a: &CompletionsArgs, out: &mut dyn Write) -> Result<()> {
    let mut cmd = Cli::command();
    clap_complete::generate(a.shell, &mut cmd, "thinpool", out);
    Ok(())
}

/// `thinpool manpages DIR` (what tools/man.sh runs).
pub fn manpages(a: &ManpagesArgs, out: &mut dyn Write) -> Result<()> {
    if a.dir.exists() {
        let busy = std::fs::read_dir(&a.dir)
            .with_context(|| format!("cannot read {}", a.dir.display()))?
            .next()
            .is_some();
        anyhow::ensure!(
            !busy,
            "{} is not empty: give a new or empty directory (no file is overwritten)",
            a.dir.display()
        );
    }
    std::fs::create_dir_all(&a.dir)
        .with_context(|| format!("cannot create {}", a.dir.display()))?;
    clap_mangen::generate_to(Cli::command(), &a.dir)
        .with_context(|| format!("cannot write the manual pages into {}", a.dir.display()))?;
    let n = std::fs::read_dir(&a.dir)?.count();
    writeln!(out, "wrote {n} manual pages to {}", a.dir.display())?;
    Ok(())
}
