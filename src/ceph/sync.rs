//! `thinpool sync`: a volume's snapshots to an RBD image (push) and an image's snapshots
//! to a volume (pull), sending only what changed since the newest snapshot both sides have.
//!
//! What "both sides have" means is read from Ceph every time (the image's snapshot list),
//! never from a record of thinpool's own, so nothing is remembered that Ceph did not
//! confirm. Two keys of the image's metadata (`rbd image-meta`) make a push safe to
//! interrupt anywhere (`kill -9` included) and to repeat:
//! - `thinpool.source` = `POOL-UUID/VOLUME-ID`: the image was made by a push of that volume.
//!   A push refuses an image without it (or with another), so it never writes over an
//!   image it did not create. New images are made under a temporary name that holds the
//!   source (`IMAGE.thinpool-new.UUID.ID.NONCE`), labelled, then renamed: an image is never
//!   visible under its name without its label, and a temporary one left by a killed push
//!   is known to be ours by its name alone. A push removes every such name `rbd ls` lists,
//!   whether it still opens or was left half-removed by a killed `rbd rm` (which `rbd rm`
//!   then completes); the nonce keeps a new one clear of anything a killed `rbd rename`
//!   may have left behind under an older name.
//! - `thinpool.pending` = `created:SNAP` or `given:SNAP`: set before a diff is streamed,
//!   removed once the image lists SNAP. Found set, it means the head may hold part of a diff
//!   (`rbd import-diff` writes the head, then takes the snapshot): the next push rolls the
//!   head back to the base snapshot (or removes an image that has none yet, since it made
//!   it), and drops SNAP from the pool if that push had created it.
//!
//! A pull applies each newer snapshot's diff with `import_diff`, whose guard snapshot
//! rolls the volume back on any error; after a `kill -9` the next pull finds that guard and
//! undoes the half-applied diff itself (docs/design.md §9).

use super::rbd::{ImageSpec, Rbd, RbdSnap};
use super::{Result, SyncError};
use crate::export::diff::diff_blocks;
use crate::export::{export_diff, import_diff, ImportDiffOptions, Progress};
use crate::pool::{Pool, PoolError, VolumeId};
use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, Write};

const SOURCE: &str = "thinpool.source";
const PENDING: &str = "thinpool.pending";

/// What a sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SyncReport {
    pub volume: String,
    pub image: String,
    /// "to-rbd" or "from-rbd".
    pub direction: &'static str,
    /// The newest snapshot both sides had before (the diffs start there).
    pub base: Option<String>,
    /// Snapshots sent, oldest first (none: already up to date).
    pub snapshots: Vec<String>,
    /// Bytes of data sent, and bytes sent as zero/discard records.
    pub data_bytes: u64,
    pub zero_bytes: u64,
    /// The image (push) or the volume (pull) was made by this sync.
    pub created: bool,
    /// What an interrupted earlier sync had left, and how it was undone.
    pub recovered: Vec<String>,
}

/// Snapshots of volume `vid` in the pool: name -> (id, creating seq).
fn snapshots_of(pool: &mut Pool, vid: VolumeId) -> Result<BTreeMap<String, (VolumeId, u64)>> {
    Ok(pool
        .volumes()?
        .into_iter()
        .filter(|(_, d)| d.origin == Some(vid))
        .map(|(id, d)| (d.name, (id, d.created_seq)))
        .collect())
}

/// True when volumes `a` and `b` hold the same bytes (same size, no block differs); costs
/// O(what differs).
fn same(pool: &mut Pool, a: VolumeId, b: VolumeId) -> Result<bool> {
    if pool.details(a)?.size != pool.details(b)?.size {
        return Ok(false);
    }
    let mut differ = 0u64;
    diff_blocks(pool, a, b, &mut |_| {
        differ += 1;
        Ok(())
    })?;
    Ok(differ == 0)
}

/// The newest of the image's snapshots that is also in `ours`.
fn newest_common<'a, T>(snaps: &'a [RbdSnap], ours: &BTreeMap<String, T>) -> Option<&'a RbdSnap> {
    snaps.iter().rev().find(|s| ours.contains_key(&s.name))
}

/// A default snapshot name: `sync-YYYYMMDD-HHMMSS` (UTC), with `-N` appended while the
/// pool or the image already has it.
fn auto_name(pool: &mut Pool, snaps: &[RbdSnap]) -> Result<String> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let base = format!("sync-{}", utc_stamp(secs));
    let taken = |pool: &mut Pool, n: &str| -> Result<bool> {
        Ok(snaps.iter().any(|s| s.name == n) || pool.find(n).is_ok())
    };
    let mut name = base.clone();
    let mut i = 2;
    while taken(pool, &name)? {
        name = format!("{base}-{i}");
        i += 1;
    }
    Ok(name)
}

/// `YYYYMMDD-HHMMSS` of a Unix time (UTC), by the civil-from-days rule.
fn utc_stamp(secs: u64) -> String {
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Send volume `vol` to image `img`: take snapshot `snapshot` (or a `sync-...` one; an
/// existing snapshot of `vol` newer than the base is sent as it is) and stream its change
/// since the newest snapshot both sides have through `rbd import-diff`. The first sync
/// creates the image and sends only mapped data.
pub fn push(
    pool: &mut Pool,
    vol: &str,
    rbd: &Rbd,
    img: &ImageSpec,
    snapshot: Option<&str>,
    progress: &dyn Progress,
) -> Result<SyncReport> {
    let (vid, vd) = pool.find(vol)?;
    let source = format!("{}/{}", pool.info()?.uuid, vid.0);
    let mut rep = SyncReport {
        volume: vol.to_string(),
        image: img.to_string(),
        direction: "to-rbd",
        ..SyncReport::default()
    };
    // A new image is made under this name first (see the module docs). The name holds
    // the source, so one found here was made by a push of this volume, perhaps killed
    // before it could label it.
    let prefix = format!("{}.thinpool-new.{}", img.image, source.replace('/', "."));
    let ours_tmp = |n: &str| {
        n.strip_prefix(&prefix)
            .is_some_and(|r| r.is_empty() || r.starts_with('.'))
    };
    let listed = rbd.list(&img.pool)?;
    for name in listed.iter().filter(|n| ours_tmp(n)) {
        let t = img.sibling(name.clone());
        // `None`: half-removed; `rbd rm` completes that.
        if let Some(label) = rbd.meta(&t)? {
            let foreign = label.get(SOURCE).is_some_and(|s| *s != source);
            if foreign || rbd.snaps(&t)?.is_some_and(|v| !v.is_empty()) {
                return Err(SyncError::InTheWay(t.to_string()));
            }
        }
        rbd.remove(&t)?;
        rep.recovered
            .push(format!("removed {t}, left by an interrupted first sync"));
    }
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let tmp = img.sibling(format!("{prefix}.{nonce:x}"));
    let found = rbd.meta(img)?;
    if found.is_none() && listed.contains(&img.image) {
        return Err(SyncError::HalfRemoved(img.to_string()));
    }
    let mut exists = found.is_some();
    let mut snaps = Vec::new();
    let mut ours = snapshots_of(pool, vid)?;
    if let Some(meta) = found {
        match meta.get(SOURCE) {
            Some(s) if *s == source => {}
            found => {
                return Err(SyncError::NotOurs {
                    image: img.to_string(),
                    volume: vol.to_string(),
                    found: found.cloned(),
                })
            }
        }
        // Gone since the last question: the rbd rm of a killed push, already on its way
        // to the cluster when the push died, went through after all.
        let listed = rbd.snaps(img)?;
        exists = listed.is_some();
        snaps = listed.unwrap_or_default();
        if let (true, Some(p)) = (exists, meta.get(PENDING)) {
            exists = recover_push(pool, rbd, img, p, &snaps, &mut ours, &mut rep)?;
        }
        if exists && newest_common(&snaps, &ours).is_none() {
            if !snaps.is_empty() {
                return Err(SyncError::NoCommon {
                    image: img.to_string(),
                    volume: vol.to_string(),
                });
            }
            // Made by a first sync of this volume that never completed: start again.
            rbd.remove(img)?;
            rep.recovered
                .push(format!("removed {img}: its first sync never completed"));
            exists = false;
        }
    }
    if !exists {
        snaps.clear();
    }
    let base = newest_common(&snaps, &ours).cloned();
    rep.base = base.as_ref().map(|b| b.name.clone());
    let name = match snapshot {
        Some(n) => n.to_string(),
        None => auto_name(pool, &snaps)?,
    };
    if snaps.iter().any(|s| s.name == name) {
        if rep.base.as_deref() == Some(name.as_str()) {
            return Ok(rep); // already there: up to date
        }
        return Err(SyncError::SnapOnImage {
            image: img.to_string(),
            snap: name,
        });
    }
    let created_snap = match ours.get(&name) {
        Some(&(_, seq)) => {
            if let Some(b) = &base {
                if ours[&b.name].1 >= seq {
                    return Err(SyncError::OlderThanBase {
                        snap: name,
                        base: b.name.clone(),
                    });
                }
            }
            false
        }
        None => match pool.find(&name) {
            Ok(_) => {
                return Err(SyncError::NotASnapshot {
                    name,
                    volume: vol.to_string(),
                })
            }
            Err(PoolError::NoSuchVolume(_)) => true,
            Err(e) => return Err(e.into()),
        },
    };
    if !exists {
        rbd.create(&tmp, vd.size)?;
        rbd.meta_set(&tmp, SOURCE, &source)?;
        rbd.rename(&tmp, img)?;
        rep.created = true;
    }
    let mark = format!("{}:{name}", if created_snap { "created" } else { "given" });
    rbd.meta_set(img, PENDING, &mark)?;
    let sid = if created_snap {
        pool.snapshot(vol, &name, true)?
    } else {
        ours[&name].0
    };
    let from = base.as_ref().map(|b| ours[&b.name].0);
    let sent = (|| -> Result<crate::export::rbd::ExportDiffStats> {
        let mut run = rbd.import_diff(img)?;
        let stdin = run.child.stdin.take().expect("import-diff reads stdin");
        let mut w = BufWriter::with_capacity(1 << 20, stdin);
        let stats = export_diff(pool, sid, from, &mut w, progress).and_then(|s| {
            w.flush()
                .map_err(crate::export::ExportError::io("writing to rbd import-diff"))?;
            Ok(s)
        });
        drop(w);
        match stats {
            // rbd's own message says more than the broken pipe thinpool saw.
            Err(e) => Err(run.finish().err().unwrap_or(e.into())),
            Ok(s) => run.finish().map(|()| s),
        }
    })();
    let stats = match sent {
        Ok(s) => s,
        Err(e) => {
            // Undo now what the next push would (the image head, the new snapshot).
            let snaps = rbd.snaps(img).ok().flatten().unwrap_or_default();
            let mut ignored = SyncReport::default();
            let _ = recover_push(pool, rbd, img, &mark, &snaps, &mut ours, &mut ignored);
            return Err(e);
        }
    };
    // Confirmed only when the image lists the snapshot.
    let now = rbd.snaps(img)?.ok_or_else(|| vanished(img))?;
    if !now.iter().any(|s| s.name == name) {
        return Err(SyncError::Unconfirmed {
            image: img.to_string(),
            snap: name,
        });
    }
    rbd.meta_remove(img, PENDING)?;
    rep.snapshots.push(name);
    rep.data_bytes = stats.data_bytes;
    rep.zero_bytes = stats.zero_bytes;
    Ok(rep)
}

fn vanished(img: &ImageSpec) -> SyncError {
    SyncError::Vanished(img.to_string())
}

/// Undo what an interrupted push left (module docs); returns whether the image still
/// exists.
fn recover_push(
    pool: &mut Pool,
    rbd: &Rbd,
    img: &ImageSpec,
    pending: &str,
    snaps: &[RbdSnap],
    ours: &mut BTreeMap<String, (VolumeId, u64)>,
    rep: &mut SyncReport,
) -> Result<bool> {
    let (how, snap) = pending.split_once(':').unwrap_or(("given", pending));
    let mut exists = true;
    if !snaps.iter().any(|s| s.name == snap) {
        match newest_common(snaps, ours) {
            Some(b) => {
                rbd.rollback(img, &b.name)?;
                rep.recovered.push(format!(
                    "rolled {img} back to '{}': a sync of '{snap}' was interrupted",
                    b.name
                ));
            }
            None if snaps.is_empty() => {
                rbd.remove(img)?;
                rep.recovered.push(format!(
                    "removed {img}: its first sync (of '{snap}') was interrupted"
                ));
                exists = false;
            }
            None => {
                return Err(SyncError::NoCommon {
                    image: img.to_string(),
                    volume: rep.volume.clone(),
                })
            }
        }
        if how == "created" && ours.remove(snap).is_some() {
            pool.remove_volume(snap)?;
            rep.recovered.push(format!(
                "removed snapshot '{snap}', taken by the interrupted sync"
            ));
        }
    }
    if exists {
        rbd.meta_remove(img, PENDING)?;
    }
    Ok(exists)
}

/// Bring image `img`'s snapshots into volume `vol`: every snapshot newer than the newest
/// one both sides have, oldest first, each through `rbd export-diff` and `import_diff`
/// (which takes the snapshot in the pool). Without `vol` (or with a `vol` that holds
/// nothing and has no snapshot) the first diff is the image's whole first snapshot.
pub fn pull(
    pool: &mut Pool,
    rbd: &Rbd,
    img: &ImageSpec,
    vol: &str,
    progress: &dyn Progress,
) -> Result<SyncReport> {
    let mut rep = SyncReport {
        volume: vol.to_string(),
        image: img.to_string(),
        direction: "from-rbd",
        ..SyncReport::default()
    };
    let snaps = rbd
        .snaps(img)?
        .ok_or_else(|| SyncError::NoImage(img.to_string()))?;
    let Some(first) = snaps.first() else {
        return Err(SyncError::NoSnapshots(img.to_string()));
    };
    let vid = match pool.find(vol) {
        Ok((vid, _)) => vid,
        Err(PoolError::NoSuchVolume(_)) => {
            let vid = pool.create_volume(vol, first.size, false)?;
            rep.created = true;
            vid
        }
        Err(e) => return Err(e.into()),
    };
    let guard = crate::export::rbd::guard_name(vid);
    let mut ours = snapshots_of(pool, vid)?;
    ours.remove(&guard);
    let base = newest_common(&snaps, &ours).cloned();
    let target = base.as_ref().map(|b| ours[&b.name].0);
    if let Ok((gid, _)) = pool.find(&guard) {
        // A pull (import_diff) was interrupted; its guard holds the volume as it was. It
        // is undone when it started where a pull starts: from the base (or from nothing).
        let at_start = |pool: &mut Pool, v: VolumeId| -> Result<bool> {
            match target {
                Some(t) => same(pool, t, v),
                None => Ok(pool.details(v)?.mapped == 0),
            }
        };
        if !at_start(pool, vid)? {
            if !at_start(pool, gid)? {
                return Err(SyncError::InterruptedImport {
                    pool: pool.dir().display().to_string(),
                    volume: vol.to_string(),
                    guard,
                });
            }
            pool.rollback(vol, &guard)?;
            rep.recovered.push(format!(
                "rolled '{vol}' back to what it held before an interrupted sync"
            ));
        }
        pool.remove_volume(&guard)?;
        rep.recovered.push(format!(
            "removed snapshot '{guard}', left by an interrupted sync"
        ));
    }
    let start = match &base {
        Some(b) => {
            let bid = ours[&b.name].0;
            if !same(pool, bid, vid)? {
                return Err(SyncError::Diverged {
                    pool: pool.dir().display().to_string(),
                    volume: vol.to_string(),
                    base: b.name.clone(),
                });
            }
            snaps.iter().position(|s| s.id == b.id).map_or(0, |i| i + 1)
        }
        None => {
            let d = pool.details(vid)?;
            if d.mapped != 0 || !ours.is_empty() {
                return Err(SyncError::NoCommon {
                    image: img.to_string(),
                    volume: vol.to_string(),
                });
            }
            0
        }
    };
    rep.base = base.as_ref().map(|b| b.name.clone());
    let mut prev = rep.base.clone();
    for s in &snaps[start..] {
        let r = (|| -> Result<crate::export::ImportDiffReport> {
            let mut run = rbd.export_diff(img, prev.as_deref(), &s.name)?;
            let stdout = run.child.stdout.take().expect("export-diff writes stdout");
            let mut r = BufReader::with_capacity(1 << 20, stdout);
            let opts = ImportDiffOptions::default();
            match import_diff(pool, vol, &mut r, &opts, progress) {
                Ok(rep) => {
                    drop(r);
                    run.finish().map(|()| rep)
                }
                Err(e) => {
                    drop(r);
                    // A stream cut short: rbd's message is the cause.
                    Err(run.finish().err().unwrap_or(e.into()))
                }
            }
        })();
        match r {
            Ok(ir) => {
                rep.data_bytes += ir.data_bytes;
                rep.zero_bytes += ir.zero_bytes;
                rep.snapshots.push(s.name.clone());
                prev = Some(s.name.clone());
            }
            Err(e) => {
                if rep.created && rep.snapshots.is_empty() {
                    let _ = pool.remove_volume(vol);
                }
                return Err(e);
            }
        }
    }
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamps_match_known_dates() {
        assert_eq!(utc_stamp(0), "19700101-000000");
        assert_eq!(utc_stamp(951_782_400), "20000229-000000");
        assert_eq!(utc_stamp(1_796_300_000), "20261203-121320");
        assert_eq!(utc_stamp(4_102_444_799), "20991231-235959");
    }
}
