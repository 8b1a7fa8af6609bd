//! thinpool: block-level thin provisioning in userspace, in the style of dm-thin.
//!
//! Layers (imports point down only; docs/design.md §1): [`pool`] (volumes, snapshots, data
//! path, commit) over [`meta`] (block manager, COW B-tree, space maps, superblock journal) over
//! [`io`] (block devices). The frontends [`cli`], [`nbd`], [`export`], [`check`] and [`crash`]
//! are adapters over [`pool::Pool`] (and [`pool::SharedPool`] for the NBD server).

/// `eprintln!` that cannot panic: a message to a closed or broken stderr (say
/// `thinpool ... 2>&1 | head -1`) is dropped instead of turning into a crash.
macro_rules! eprintln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub mod ceph;
pub mod check;
pub mod cli;
pub mod crash;
pub mod dmthin;
pub mod export;
#[doc(hidden)]
pub mod fuzzing;
pub mod hash;
pub mod histogram;
pub mod io;
pub mod logging;
pub mod meta;
pub mod nbd;
pub mod pool;
pub mod progress;
