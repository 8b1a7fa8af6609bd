//! Verifying a post-crash state: build the devices' images for one state of a crash point
//! (with the faults it injects), recover the pool read-only, run the checker and compare
//! every 512-byte sector of every volume with the oracle; and checking that the live pool
//! reads exactly the latest values.

use super::config::FaultSet;
use super::explore::Recovered;
use super::oracle::{decode_sector, Exists, Oracle, SecState, VolOracle, SECTOR};
use crate::check;
use crate::io::sim::{CrashFaults, CrashImage, CrashPoint};
use crate::io::BlockDev;
use crate::pool::{OpenOptions, Pool, VolumeId};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;

pub(super) enum StateOutcome {
    /// Recovered and every sector matched the oracle.
    Exact,
    /// A media fault was injected; `detected` when recovery, the checker or a read said so.
    Injected { detected: bool },
}

/// Recover state `k` of crash point `p` (read-only), check it and compare every sector with
/// the oracle. With `keep`, a state that verified exactly is returned for a continuation.
/// `upto`: the state is a crash just before that write (see [`CrashFaults::upto`]).
pub(super) fn verify_state(
    p: &CrashPoint,
    fs: FaultSet,
    k: usize,
    upto: Option<u64>,
    rng: &mut ChaCha8Rng,
    oracle: &Oracle,
    keep: bool,
) -> Result<(StateOutcome, Option<Recovered>), String> {
    // State 0 keeps every unflushed write, state 1 drops them all; the rest are random,
    // or crashes between two writes.
    let faults = match k {
        _ if upto.is_some() => CrashFaults {
            upto,
            ..Default::default()
        },
        0 => CrashFaults::default(),
        1 => CrashFaults {
            drop: 1.0,
            ..Default::default()
        },
        _ => CrashFaults {
            drop: if fs.drop { 0.5 } else { 0.0 },
            reorder: fs.reorder,
            torn: if fs.torn { 0.3 } else { 0.0 },
            misdirect: false,
            upto: None,
        },
    };
    // At most one media fault per state (the fault budget), never in states 0 and 1.
    let media = if k >= 2 && upto.is_none() && fs.media() {
        let kinds: Vec<u8> = [(fs.eio, 0u8), (fs.bitflip, 1), (fs.misdirect, 2)]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, n)| *n)
            .collect();
        Some(kinds[rng.gen_range(0..kinds.len())])
    } else {
        None
    };
    let meta_faults = CrashFaults {
        misdirect: media == Some(2),
        ..faults
    };
    let mut meta_img = CrashImage::build(p, 0, meta_faults, rng);
    let data_img = Arc::new(CrashImage::build(p, 1, faults, rng));
    let data: Arc<dyn BlockDev> = data_img.clone();
    match media {
        Some(0) => {
            let secs = meta_img.written_sectors();
            let s = secs[rng.gen_range(0..secs.len())];
            meta_img.fail_reads(s / 8 * 4096, 4096);
        }
        Some(1) => {
            let secs = meta_img.written_sectors();
            let s = secs[rng.gen_range(0..secs.len())];
            meta_img.flip_bit(s * 512 + rng.gen_range(0..512), rng.gen_range(0..8));
        }
        _ => {}
    }
    let meta_img = Arc::new(meta_img);
    let meta: Arc<dyn BlockDev> = meta_img.clone();
    let injected = media.is_some();
    let detected = |why: String| -> Result<(StateOutcome, Option<Recovered>), String> {
        if injected {
            Ok((StateOutcome::Injected { detected: true }, None))
        } else {
            Err(why)
        }
    };
    let opts = OpenOptions {
        read_only: true,
        cache_blocks: 256,
        ..OpenOptions::default()
    };
    let mut pool = match Pool::open_on(meta.clone(), data, &opts) {
        Ok(p) => p,
        Err(e) => return detected(format!("recovery failed: {e}")),
    };
    if let Some(r) = pool.open_report() {
        if r.chosen_seq != r.newest_valid_seq {
            return detected(format!(
                "recovery fell back from seq {} to {} with no media fault: {:?}",
                r.newest_valid_seq, r.chosen_seq, r.skipped
            ));
        }
    }
    let r = check::check(meta, None);
    if !r.is_clean() {
        let errs: Vec<String> = r.errors().take(5).map(|f| f.to_string()).collect();
        return detected(format!("checker found errors after recovery: {errs:?}"));
    }
    let vols = match pool.volumes() {
        Ok(v) => v,
        Err(e) => return detected(format!("listing volumes failed: {e}")),
    };
    for (_, d) in &vols {
        if !oracle.vols.contains_key(&d.name) {
            return Err(format!(
                "volume '{}' exists, but it was never created or its removal was acknowledged",
                d.name
            ));
        }
    }
    let keep = keep && !injected;
    let mut recovered = Oracle::default();
    for (name, vo) in &oracle.vols {
        let id = match vols.iter().find(|(_, d)| &d.name == name) {
            Some((id, _)) => *id,
            None if vo.exists == Exists::Maybe => continue,
            None => return Err(format!("volume '{name}' is missing after recovery")),
        };
        let mut now = VolOracle::new(vo.sectors, Exists::Yes);
        match verify_volume(&mut pool, id, name, vo, keep.then_some(&mut now)) {
            Ok(()) => {
                if keep {
                    recovered.vols.insert(name.clone(), now);
                }
            }
            Err(VerifyError::Read(e)) => return detected(e),
            Err(VerifyError::Wrong(e)) => {
                let r = pool
                    .open_report()
                    .map(|r| {
                        format!(
                            "recovered seq {} (newest valid {})",
                            r.chosen_seq, r.newest_valid_seq
                        )
                    })
                    .unwrap_or_default();
                return Err(format!("{e} [{r}]"));
            }
        }
    }
    if injected {
        return Ok((StateOutcome::Injected { detected: false }, None));
    }
    let recovered = keep.then_some(Recovered {
        meta: meta_img,
        data: data_img,
        oracle: recovered,
    });
    Ok((StateOutcome::Exact, recovered))
}

/// Compare every sector of every volume of the live pool with its latest value.
pub(super) fn verify_live(pool: &mut Pool, oracle: &Oracle) -> Result<(), String> {
    for (name, vo) in &oracle.vols {
        let id = pool.volume_id(name).map_err(|e| e.to_string())?;
        let size = vo.sectors * SECTOR as u64;
        let mut buf = vec![0u8; size as usize];
        pool.read(id, 0, &mut buf).map_err(|e| e.to_string())?;
        for s in 0..vo.sectors {
            let got = decode_sector(&buf[s as usize * SECTOR..(s as usize + 1) * SECTOR], s)
                .map_err(|why| format!("'{name}' sector {s} {why}"))?;
            let want = vo.get(s).latest();
            if got != want {
                return Err(format!(
                    "'{name}' sector {s} reads write {got}, expected {want}"
                ));
            }
        }
    }
    Ok(())
}

enum VerifyError {
    /// The pool refused to read (an error, not wrong data).
    Read(String),
    /// A sector holds a value the oracle does not allow.
    Wrong(String),
}

fn verify_volume(
    pool: &mut Pool,
    id: VolumeId,
    name: &str,
    vo: &VolOracle,
    mut now: Option<&mut VolOracle>,
) -> Result<(), VerifyError> {
    let size = vo.sectors * SECTOR as u64;
    let mut buf = vec![0u8; size as usize];
    pool.read(id, 0, &mut buf)
        .map_err(|e| VerifyError::Read(format!("reading '{name}' failed: {e}")))?;
    for s in 0..vo.sectors {
        let sec = &buf[s as usize * SECTOR..(s as usize + 1) * SECTOR];
        match decode_sector(sec, s) {
            Err(why) => return Err(VerifyError::Wrong(format!("'{name}' sector {s} {why}"))),
            Ok(w) if !vo.allows(s, w) => {
                let st = vo.get(s);
                let vb = s * SECTOR as u64 / pool.block_size();
                let mut maps = Vec::new();
                for (vid, d) in pool.volumes().unwrap_or_default() {
                    maps.push(format!(
                        "{}:{:?}",
                        d.name,
                        pool.mappings(vid, vb, vb + 1, 1).unwrap_or_default()
                    ));
                }
                return Err(VerifyError::Wrong(format!(
                    "'{name}' sector {s} reads write {w}; allowed: durable {} or newer {:?}; block {vb} is mapped as {maps:?}",
                    st.durable, st.newer
                )));
            }
            Ok(w) => {
                if let (Some(now), true) = (now.as_deref_mut(), w != 0) {
                    // What recovery reads is on the medium: the continuation's durable value.
                    now.map.insert(
                        s,
                        SecState {
                            durable: w,
                            newer: Vec::new(),
                        },
                    );
                }
            }
        }
    }
    Ok(())
}
