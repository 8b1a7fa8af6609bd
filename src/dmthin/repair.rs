//! `thinpool repair`: a pool whose metadata is damaged rebuilt from what can be read, as
//! `thin_repair` does for dm-thin: [`salvage`](super::salvage) reads the best record and
//! every readable node, and [`restore`] builds fresh metadata from that into
//! a new file beside the old one, on the same data file. The new file then replaces the old
//! by one rename, and the damaged metadata stays as `metadata.damaged-SEQ-TIME` (a hard link,
//! no copy): nothing is ever written into the damaged file, and a crash at any point leaves
//! either the old metadata or the new one in place.

use super::model::{DumpError, Result};
use super::restore::{self, RestoreOptions, Restored};
use super::salvage::{salvage, Salvage};
use crate::io::FileDev;
use crate::pool::PoolError;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a repair did.
#[derive(Debug, Clone)]
pub struct Repaired {
    pub salvage: Salvage,
    /// `None` for a dry run.
    pub restored: Option<Restored>,
    pub backup: Option<PathBuf>,
}

/// The scratch directory a repair builds the new metadata in (inside the pool directory).
const SCRATCH: &str = ".repair";

fn io(what: String) -> impl FnOnce(std::io::Error) -> DumpError {
    move |source| DumpError::Io { what, source }
}

/// Repair the pool in `dir` (or, with `dry_run`, only say what a repair would recover and
/// lose). The pool must not be open anywhere else.
pub fn repair(dir: &Path, dry_run: bool) -> Result<Repaired> {
    repair_with_progress(dir, dry_run, &crate::progress::NoProgress)
}

/// [`repair`], counting the mappings written into the new metadata on `progress`.
pub fn repair_with_progress(
    dir: &Path,
    dry_run: bool,
    progress: &dyn crate::progress::Progress,
) -> Result<Repaired> {
    let mpath = dir.join("metadata");
    if !mpath.exists() {
        return Err(PoolError::NotAPool(dir.to_path_buf()).into());
    }
    let dev =
        FileDev::open(&mpath, false).map_err(io(format!("cannot open {}", mpath.display())))?;
    let lockf = dev
        .file()
        .try_clone()
        .map_err(io(format!("cannot open {}", mpath.display())))?;
    let locked = crate::io::lock::try_lock(&lockf, !dry_run)
        .map_err(io(format!("cannot lock {}", mpath.display())))?;
    if !locked {
        return Err(PoolError::InUse(dir.to_path_buf()).into());
    }
    let found = salvage(Arc::new(dev))?;
    if dry_run {
        return Ok(Repaired {
            salvage: found,
            restored: None,
            backup: None,
        });
    }
    let dpath = dir.join("data");
    let data = std::fs::canonicalize(&dpath).map_err(io(format!(
        "cannot find the data file {} (repair rebuilds the metadata for it)",
        dpath.display()
    )))?;
    let scratch = dir.join(SCRATCH);
    clear_scratch(&scratch)?;
    let opts = RestoreOptions {
        data: Some(data),
        metadata_size: Some(found.label.meta_blocks * crate::meta::BLOCK_SIZE as u64),
        ..RestoreOptions::default()
    };
    let survey = restore::survey(&opts, |sink| found.dump.replay(sink))?;
    let sized = RestoreOptions {
        metadata_size: opts.metadata_size.map(|m| {
            m.max(crate::pool::sizing::restore_estimate(
                survey.nr_data_blocks,
                survey.devices,
                survey.mappings,
            ))
        }),
        ..opts
    };
    let restored = restore::restore(&scratch, &sized, Some(survey), |sink| {
        found
            .dump
            .replay(&mut super::model::Counted::new(sink, progress))
    });
    let restored = match restored {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir(&scratch);
            return Err(e);
        }
    };
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut backup = dir.join(format!("metadata.damaged-{}-{stamp}", found.newest_seq));
    let mut n = 1;
    while backup.exists() {
        backup = dir.join(format!("metadata.damaged-{}-{stamp}.{n}", found.newest_seq));
        n += 1;
    }
    std::fs::hard_link(&mpath, &backup).map_err(io(format!(
        "cannot keep the damaged metadata as {}",
        backup.display()
    )))?;
    std::fs::rename(scratch.join("metadata"), &mpath).map_err(io(format!(
        "cannot put the new metadata in place of {}",
        mpath.display()
    )))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("cannot sync {}", dir.display())))?;
    clear_scratch(&scratch)?;
    drop(lockf);
    Ok(Repaired {
        salvage: found,
        restored: Some(restored),
        backup: Some(backup),
    })
}

/// Remove what an earlier, interrupted repair left in the scratch directory: its `data`
/// symlink and `metadata` file, then the directory. Anything else there is not ours: refuse.
fn clear_scratch(scratch: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(scratch) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let ours = (name == "data" && e.file_type().is_ok_and(|t| t.is_symlink()))
            || (name == "metadata" && e.file_type().is_ok_and(|t| t.is_file()));
        if !ours {
            return Err(DumpError::input(format!(
                "{} holds {}, which an interrupted repair does not leave: move it away first",
                scratch.display(),
                e.path().display()
            )));
        }
    }
    for name in ["data", "metadata"] {
        let _ = std::fs::remove_file(scratch.join(name));
    }
    std::fs::remove_dir(scratch).map_err(io(format!("cannot remove {}", scratch.display())))
}
