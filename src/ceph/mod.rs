//! The Ceph bridge (`thinpool sync`): a volume's snapshots sent to an RBD image and back as
//! rbd diff v1 streams (`export/rbd/`), through the `rbd` command line tool (no librbd
//! binding). `rbd.rs` runs the tool; `sync.rs` decides what to send (docs/design.md §9).

mod rbd;
mod sync;

pub use rbd::{ImageSpec, Rbd, RbdSnap};
pub use sync::{pull, push, SyncReport};

use crate::export::ExportError;
use crate::pool::details::escape_name;
use crate::pool::PoolError;

#[derive(thiserror::Error, Debug)]
pub enum SyncError {
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error("'{spec}' is not an RBD image: {why}")]
    BadSpec { spec: String, why: String },
    #[error("cannot run {bin}: {source} (is ceph-common installed?)")]
    Spawn {
        bin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Rbd {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("`{command}` printed what thinpool cannot read: {why}")]
    RbdOutput { command: String, why: String },
    #[error("image {image} was not made by a sync of '{}' from this pool ({}): thinpool never writes over an image it did not create; name a new image", escape_name(.volume), match .found { Some(f) => format!("it was made from {f}"), None => "it has no thinpool.source key".to_string() })]
    NotOurs {
        image: String,
        volume: String,
        found: Option<String>,
    },
    #[error("image {image} and '{}' have no snapshot in common any more, so there is nothing to send a difference from; sync to a new image (or a new volume)", escape_name(.volume))]
    NoCommon { image: String, volume: String },
    #[error("{0} is in the way: an image of that name exists and was not left by thinpool")]
    InTheWay(String),
    #[error("image {image} already has a snapshot '{}'; name another with --snapshot", escape_name(.snap))]
    SnapOnImage { image: String, snap: String },
    #[error("snapshot '{}' is not newer than '{}', the newest snapshot both sides have", escape_name(.snap), escape_name(.base))]
    OlderThanBase { snap: String, base: String },
    #[error("'{}' exists and is not a snapshot of '{}'", escape_name(.name), escape_name(.volume))]
    NotASnapshot { name: String, volume: String },
    #[error("rbd import-diff finished but image {image} does not list snapshot '{}'; nothing is recorded as synced", escape_name(.snap))]
    Unconfirmed { image: String, snap: String },
    #[error("no RBD image {0}")]
    NoImage(String),
    #[error("image {0} is listed by `rbd ls` but does not open: an `rbd rm` of it was interrupted; `rbd rm {0}` completes the removal, then sync again")]
    HalfRemoved(String),
    #[error("image {0} vanished while thinpool synced to it: another sync or an rbd command removed or renamed it; nothing is recorded as synced")]
    Vanished(String),
    #[error(
        "image {0} has no snapshot: sync needs one (`rbd snap create`) to copy a consistent state"
    )]
    NoSnapshots(String),
    #[error("'{}' was written since snapshot '{}', the newest it shares with the image: a sync would mix the two (`thinpool rollback {pool} {0} {1}` drops those writes)", escape_name(.volume), escape_name(.base))]
    Diverged {
        pool: String,
        volume: String,
        base: String,
    },
    #[error("an import-diff into '{}' that sync did not start was interrupted: snapshot '{}' holds what it held before (`thinpool rollback {pool} {0} {1}`, or `thinpool remove {pool} {1}`)", escape_name(.volume), escape_name(.guard))]
    InterruptedImport {
        pool: String,
        volume: String,
        guard: String,
    },
}

impl From<PoolError> for SyncError {
    fn from(e: PoolError) -> Self {
        SyncError::Export(ExportError::Pool(e))
    }
}

pub type Result<T, E = SyncError> = std::result::Result<T, E>;
