//! `thinpool sync`: the Ceph bridge's command (`crate::ceph`).

use super::output::print_json;
use super::progress::Bar;
use super::Mode;
use crate::ceph::{self, ImageSpec, Rbd};
use crate::pool::Pool;
use anyhow::Result;
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

/// How long `sync` waits for a pool another process holds: long enough for the `rbd`
/// children of a killed sync, which keep the pool locked, to finish what they were doing.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// `thinpool sync POOL VOLUME rbd:RBDPOOL/IMAGE` sends; `thinpool sync --from
/// rbd:RBDPOOL/IMAGE POOL VOLUME` brings back.
#[derive(Args, Debug)]
pub struct SyncArgs {
    /// Pool directory
    pub pool: PathBuf,
    /// Volume to send (or, with --from, to bring the image's snapshots into; made when missing)
    pub volume: String,
    /// Image to send to, as rbd:RBDPOOL/IMAGE (made by the first sync)
    #[arg(required_unless_present = "from", conflicts_with = "from")]
    pub image: Option<String>,
    /// Bring every snapshot of this image (rbd:RBDPOOL/IMAGE) newer than the newest one both
    /// sides have into VOLUME
    #[arg(long, value_name = "rbd:RBDPOOL/IMAGE")]
    pub from: Option<String>,
    /// Name of the snapshot to take and send (default sync-YYYYMMDD-HHMMSS, UTC); an
    /// existing snapshot of VOLUME newer than the last one synced is sent as it is
    #[arg(long, conflicts_with = "from")]
    pub snapshot: Option<String>,
    /// ceph.conf for rbd (default: rbd's own, $CEPH_CONF or /etc/ceph/ceph.conf)
    #[arg(long, value_name = "FILE")]
    pub ceph_conf: Option<PathBuf>,
    /// Print the outcome as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn sync(a: &SyncArgs, pool: &mut Pool, out: &mut dyn Write, mode: Mode) -> Result<()> {
    let rbd = Rbd {
        conf: a.ceph_conf.clone(),
        inherit: pool.lock_fds(),
        ..Rbd::default()
    };
    let bar = Bar::new(mode, a.json, "sync");
    let rep = match (&a.image, &a.from) {
        (Some(img), None) => {
            let img = ImageSpec::parse(img)?;
            ceph::push(pool, &a.volume, &rbd, &img, a.snapshot.as_deref(), &bar)
        }
        (None, Some(img)) => {
            let img = ImageSpec::parse(img)?;
            ceph::pull(pool, &rbd, &img, &a.volume, &bar)
        }
        _ => unreachable!("clap requires exactly one of IMAGE and --from"),
    };
    bar.finish();
    let rep = rep?;
    if a.json {
        print_json(out, &serde_json::to_value(&rep)?)?;
        return Ok(());
    }
    for r in &rep.recovered {
        writeln!(out, "recovered: {r}")?;
    }
    let (from, to) = if rep.direction == "to-rbd" {
        (format!("'{}'", rep.volume), rep.image.clone())
    } else {
        (rep.image.clone(), format!("'{}'", rep.volume))
    };
    let since = rep
        .base
        .as_ref()
        .map(|b| format!(" since '{b}'"))
        .unwrap_or_default();
    if rep.snapshots.is_empty() {
        writeln!(out, "{to} is up to date with {from}{since}")?;
        return Ok(());
    }
    writeln!(
        out,
        "synced {from} to {to}{since}: {} ({} of data, {} zeroed){}",
        rep.snapshots
            .iter()
            .map(|s| format!("'{s}'"))
            .collect::<Vec<_>>()
            .join(", "),
        super::size::format_size(rep.data_bytes),
        super::size::format_size(rep.zero_bytes),
        if rep.created { ", created it" } else { "" }
    )?;
    Ok(())
}

/// A server runs the command in its own directory and environment: send the pool and the
/// ceph.conf (ours, from $CEPH_CONF when not given) as absolute paths.
pub(super) fn forwarded_argv(cmd: &super::Command, argv: &[String]) -> Option<Result<Vec<String>>> {
    let super::Command::Sync(a) = cmd else {
        return None;
    };
    Some((|| {
        let mut v = vec![
            argv.first().cloned().unwrap_or_else(|| "thinpool".into()),
            "sync".into(),
            super::absolute_arg(&a.pool)?,
        ];
        let conf = a
            .ceph_conf
            .clone()
            .or_else(|| std::env::var_os("CEPH_CONF").map(PathBuf::from));
        if let Some(c) = conf {
            v.extend(["--ceph-conf".into(), super::absolute_arg(&c)?]);
        }
        if let Some(f) = &a.from {
            v.extend(["--from".into(), f.clone()]);
        }
        if let Some(s) = &a.snapshot {
            v.extend(["--snapshot".into(), s.clone()]);
        }
        if a.json {
            v.push("--json".into());
        }
        v.extend(["--".into(), a.volume.clone()]);
        v.extend(a.image.clone());
        Ok(v)
    })())
}
