//! How results are shown: aligned tables and `key: value` blocks for people, one JSON
//! document for scripts. Everything writes to a `&mut dyn Write`, so the same code serves a
//! terminal and the server's control socket.

use super::size::format_size;
use crate::pool::{Pool, PoolInfo, VolumeInfo};
use anyhow::Context;
use serde_json::{json, Value};
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

/// Create (or truncate) the output file `path` of a command on `pool`, refusing the pool's
/// own `metadata` and `data` files (also through another name or a link): truncating one
/// would destroy the pool.
pub fn create_output(pool: &Pool, path: &Path) -> anyhow::Result<File> {
    use std::os::unix::fs::MetadataExt;
    if let Ok(target) = std::fs::metadata(path) {
        for name in ["metadata", "data"] {
            if let Ok(m) = std::fs::metadata(pool.dir().join(name)) {
                if (m.dev(), m.ino()) == (target.dev(), target.ino()) {
                    anyhow::bail!(
                        "refusing to write to {}: it is this pool's {name} file",
                        path.display()
                    );
                }
            }
        }
    }
    File::create(path).with_context(|| format!("cannot create {}", path.display()))
}

/// Print one JSON document and a newline.
pub fn print_json(out: &mut dyn Write, v: &Value) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, v)?;
    writeln!(out)
}

/// A volume as `list --json` and `info --json` show it.
pub fn volume_json(v: &VolumeInfo) -> Value {
    json!({
        "name": v.name,
        "id": v.id,
        "size": v.size,
        "mapped_blocks": v.mapped_blocks,
        "exclusive_blocks": v.exclusive_blocks,
        "shared_blocks": v.shared_blocks,
        "origin": v.origin,
        "read_only": v.read_only,
        "created": v.created,
    })
}

/// The pool as `pool info --json` shows it.
pub fn pool_json(i: &PoolInfo) -> Value {
    json!({
        "uuid": i.uuid,
        "format_version": i.format_version,
        "block_size": i.block_size,
        "data_size": i.data_blocks_total * i.block_size,
        "data_blocks_total": i.data_blocks_total,
        "data_blocks_used": i.data_blocks_used,
        "data_blocks_free": i.data_blocks_total.saturating_sub(i.data_blocks_used),
        "metadata_blocks_total": i.metadata_blocks_total,
        "metadata_blocks_used": i.metadata_blocks_used,
        "metadata_blocks_free": i.metadata_blocks_total.saturating_sub(i.metadata_blocks_used),
        "seq": i.seq,
        "volumes": i.volumes,
    })
}

/// `pool info` for people.
pub fn print_pool(out: &mut dyn Write, dir: &str, i: &PoolInfo) -> io::Result<()> {
    let meta_bs = 4096u64;
    let pct = |used: u64, total: u64| {
        if total == 0 {
            0.0
        } else {
            used as f64 * 100.0 / total as f64
        }
    };
    let rows = [
        ("pool", dir.to_string()),
        ("uuid", i.uuid.clone()),
        ("format", format!("version {}", i.format_version)),
        ("block size", format_size(i.block_size)),
        (
            "data",
            format!(
                "{} of {} used ({} of {} blocks, {:.1}%), {} free",
                format_size(i.data_blocks_used * i.block_size),
                format_size(i.data_blocks_total * i.block_size),
                i.data_blocks_used,
                i.data_blocks_total,
                pct(i.data_blocks_used, i.data_blocks_total),
                format_size(
                    (i.data_blocks_total - i.data_blocks_used.min(i.data_blocks_total))
                        * i.block_size
                ),
            ),
        ),
        (
            "metadata",
            format!(
                "{} of {} used ({} of {} blocks, {:.1}%)",
                format_size(i.metadata_blocks_used * meta_bs),
                format_size(i.metadata_blocks_total * meta_bs),
                i.metadata_blocks_used,
                i.metadata_blocks_total,
                pct(i.metadata_blocks_used, i.metadata_blocks_total),
            ),
        ),
        ("volumes", i.volumes.to_string()),
        ("seq", i.seq.to_string()),
    ];
    print_fields(out, &rows)
}

/// `info` for people.
pub fn print_volume(out: &mut dyn Write, v: &VolumeInfo, block_size: u64) -> io::Result<()> {
    let blocks = |n: u64| format!("{n} blocks ({})", format_size(n * block_size));
    let rows = vec![
        ("name", v.name.clone()),
        ("id", v.id.to_string()),
        (
            "size",
            format!("{} ({} bytes)", format_size(v.size), v.size),
        ),
        ("mapped", blocks(v.mapped_blocks)),
        ("exclusive", blocks(v.exclusive_blocks)),
        ("shared", blocks(v.shared_blocks)),
        ("origin", v.origin.clone().unwrap_or_else(|| "-".into())),
        ("read-only", if v.read_only { "yes" } else { "no" }.into()),
        ("created", format_time(v.created)),
    ];
    print_fields(out, &rows)
}

/// `list` for people.
pub fn print_volumes(out: &mut dyn Write, vols: &[VolumeInfo], block_size: u64) -> io::Result<()> {
    if vols.is_empty() {
        return writeln!(
            out,
            "no volumes (create one with `thinpool create POOL NAME --size SIZE`)"
        );
    }
    let header = [
        "NAME",
        "ID",
        "SIZE",
        "MAPPED",
        "EXCLUSIVE",
        "SHARED",
        "USED",
        "ORIGIN",
        "RO",
    ];
    let rows: Vec<Vec<String>> = vols
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                v.id.to_string(),
                format_size(v.size),
                v.mapped_blocks.to_string(),
                v.exclusive_blocks.to_string(),
                v.shared_blocks.to_string(),
                format_size(v.mapped_blocks * block_size),
                v.origin.clone().unwrap_or_else(|| "-".into()),
                if v.read_only { "yes" } else { "no" }.into(),
            ]
        })
        .collect();
    // Numbers are right-aligned, text left-aligned.
    let right = [false, true, true, true, true, true, true, false, false];
    print_table(out, &header, &rows, &right)
}

/// An aligned table with a header row.
pub fn print_table(
    out: &mut dyn Write,
    header: &[&str],
    rows: &[Vec<String>],
    right: &[bool],
) -> io::Result<()> {
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = width[i] - c.chars().count();
            if i > 0 {
                s.push_str("  ");
            }
            if right.get(i).copied().unwrap_or(false) {
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            } else {
                s.push_str(c);
                if i + 1 < cells.len() {
                    s.push_str(&" ".repeat(pad));
                }
            }
        }
        s
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for r in rows {
        writeln!(out, "{}", line(r.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

/// `key:  value` lines with the values aligned.
pub fn print_fields(out: &mut dyn Write, rows: &[(&str, String)]) -> io::Result<()> {
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    for (k, v) in rows {
        writeln!(out, "{:<w$} {v}", format!("{k}:"))?;
    }
    Ok(())
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC` (no time-zone database needed).
pub fn format_time(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_formatting() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_time(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(format_time(951_782_400), "2000-02-29 00:00:00 UTC");
    }

    #[test]
    fn table_alignment() {
        let mut out = Vec::new();
        let rows = vec![
            vec!["a".to_string(), "1".to_string()],
            vec!["long".to_string(), "100".to_string()],
        ];
        print_table(&mut out, &["NAME", "N"], &rows, &[false, true]).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "NAME    N\na       1\nlong  100\n"
        );
    }
}
