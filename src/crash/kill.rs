//! Kill mode: the real binary on real files, killed with SIGKILL at random moments.
//!
//! The parent creates a pool (or reuses one), then each round spawns
//! `thinpool crashtest --kill-child DIR ...`, which runs a random workload of writes,
//! discards and commits and reports on stdout, *before* each write, the write's id and range,
//! and *after* each commit returned, an acknowledgement. The parent kills the child at a
//! random moment, reopens the pool, runs the checker, and checks every 512-byte sector of
//! every volume against the oracle built from the child's reports: acknowledged data must be
//! there exactly; newer writes may or may not be.

use super::oracle::{decode_sector, sector_content, Exists, Oracle, VolOracle, SECTOR};
use crate::check;
use crate::io::{BlockDev, FileDev};
use crate::pool::{CreateOptions, OpenOptions, Pool, VolumeId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const VOLUMES: usize = 4;
const VOL_SECTORS: u64 = 2048; // 1 MiB each

#[derive(Debug, Clone)]
pub struct KillConfig {
    pub dir: PathBuf,
    pub rounds: usize,
    pub seed: u64,
    /// The `thinpool` binary to run as the child.
    pub exe: PathBuf,
}

#[derive(Debug, Clone, Default)]
pub struct KillReport {
    pub rounds: usize,
    /// Writes the children reported, and acknowledgements (commits) among them.
    pub writes: u64,
    pub acks: u64,
    pub sectors_checked: u64,
    pub elapsed: Duration,
    pub violations: Vec<String>,
}

fn vol_name(i: usize) -> String {
    format!("k{i}")
}

/// Run the kill loop, counting rounds on `progress`.
pub fn run_kill(
    cfg: &KillConfig,
    progress: &dyn crate::progress::Progress,
) -> Result<KillReport, String> {
    progress.set_total(cfg.rounds as u64);
    let start = Instant::now();
    let mut rep = KillReport::default();
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut oracle = Oracle::default();
    if !cfg.dir.join("metadata").exists() {
        let mut o = CreateOptions::new(64 << 20);
        o.block_size = 4096;
        let mut p = Pool::create(&cfg.dir, &o).map_err(|e| format!("creating the pool: {e}"))?;
        for i in 0..VOLUMES {
            p.create_volume(&vol_name(i), VOL_SECTORS * SECTOR as u64, false)
                .map_err(|e| e.to_string())?;
        }
    }
    // Start from what the pool holds now (a reused pool keeps its contents).
    {
        let mut p = Pool::open(&cfg.dir, &OpenOptions::default()).map_err(|e| e.to_string())?;
        for i in 0..VOLUMES {
            let name = vol_name(i);
            let id = p
                .volume_id(&name)
                .map_err(|e| format!("{e} (use an empty DIR)"))?;
            let mut vo = VolOracle::new(VOL_SECTORS, Exists::Yes);
            let mut buf = vec![0u8; (VOL_SECTORS as usize) * SECTOR];
            p.read(id, 0, &mut buf).map_err(|e| e.to_string())?;
            for s in 0..VOL_SECTORS {
                let at = s as usize * SECTOR;
                let w = decode_sector(&buf[at..at + SECTOR], s)
                    .map_err(|e| format!("{name} sector {s} {e}"))?;
                if w != 0 {
                    vo.map.entry(s).or_default().durable = w;
                }
            }
            oracle.vols.insert(name, vo);
        }
    }
    let mut next_id = oracle
        .vols
        .values()
        .flat_map(|v| v.map.values().map(|s| s.durable))
        .max()
        .unwrap_or(0)
        + 1;
    for round in 0..cfg.rounds {
        let child_seed = rng.gen::<u64>();
        let kill_after = Duration::from_millis(rng.gen_range(30..400));
        let mut child = Command::new(&cfg.exe)
            .args(["crashtest", "--kill-child"])
            .arg(&cfg.dir)
            .args([
                "--seed",
                &child_seed.to_string(),
                "--first-id",
                &next_id.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", cfg.exe.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for l in BufReader::new(stdout).lines() {
                match l {
                    Ok(l) => lines.push(l),
                    Err(_) => break,
                }
            }
            lines
        });
        std::thread::sleep(kill_after);
        let _ = child.kill(); // SIGKILL
        let status = child.wait().map_err(|e| e.to_string())?;
        let lines = reader
            .join()
            .map_err(|_| "reader thread panicked".to_string())?;
        if status.success() {
            // It finished its whole workload before the kill: still a valid round.
        } else if status.code().is_some() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            return Err(format!(
                "round {round}: the child failed on its own: {status} {err}"
            ));
        }
        // Replay the child's reports into the oracle.
        let mut ready = false;
        for l in &lines {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                ["ready"] => ready = true,
                ["W", vol, start, len, id] => {
                    let (start, len, id): (u64, u64, u64) = (
                        start.parse().unwrap_or(0),
                        len.parse().unwrap_or(0),
                        id.parse().unwrap_or(0),
                    );
                    let vo = oracle
                        .vols
                        .get_mut(*vol)
                        .ok_or_else(|| format!("child reported unknown volume {vol}"))?;
                    for s in start..start + len {
                        vo.write(s, id);
                    }
                    rep.writes += 1;
                    next_id = next_id.max(id + 1);
                }
                ["D", vol, start, len] => {
                    let (start, len): (u64, u64) =
                        (start.parse().unwrap_or(0), len.parse().unwrap_or(0));
                    let vo = oracle
                        .vols
                        .get_mut(*vol)
                        .ok_or_else(|| format!("child reported unknown volume {vol}"))?;
                    for s in start..start + len {
                        vo.write(s, 0);
                    }
                }
                ["A"] => {
                    oracle.ack();
                    rep.acks += 1;
                }
                _ => {
                    return Err(format!(
                        "round {round}: unexpected line from the child: {l:?}"
                    ))
                }
            }
        }
        let _ = ready;
        // Recover and verify.
        verify_round(&cfg.dir, &mut oracle, &mut rep).map_err(|e| format!("round {round}: {e}"))?;
        rep.rounds = round + 1;
        progress.inc(1);
        if !rep.violations.is_empty() {
            break;
        }
    }
    rep.elapsed = start.elapsed();
    Ok(rep)
}

fn verify_round(dir: &Path, oracle: &mut Oracle, rep: &mut KillReport) -> Result<(), String> {
    let meta: Arc<dyn BlockDev> =
        Arc::new(FileDev::open(&dir.join("metadata"), false).map_err(|e| e.to_string())?);
    let data_len = FileDev::open(&dir.join("data"), false)
        .map_err(|e| e.to_string())?
        .len();
    let r = check::check_with_data(meta, data_len, None);
    if !r.is_clean() {
        let errs: Vec<String> = r.errors().take(5).map(|f| f.to_string()).collect();
        rep.violations
            .push(format!("checker found errors after SIGKILL: {errs:?}"));
        return Ok(());
    }
    let mut p =
        Pool::open(dir, &OpenOptions::default()).map_err(|e| format!("recovery failed: {e}"))?;
    for (name, vo) in oracle.vols.iter_mut() {
        let id = p.volume_id(name).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; (vo.sectors as usize) * SECTOR];
        p.read(id, 0, &mut buf).map_err(|e| e.to_string())?;
        for s in 0..vo.sectors {
            let at = s as usize * SECTOR;
            let st = vo.get(s);
            rep.sectors_checked += 1;
            match decode_sector(&buf[at..at + SECTOR], s) {
                Ok(w) if st.allows(w) => {
                    // The recovered value is now the durable one.
                    if w == 0 {
                        vo.map.remove(&s);
                    } else {
                        let e = vo.map.entry(s).or_default();
                        e.durable = w;
                        e.newer.clear();
                    }
                }
                Ok(w) => {
                    rep.violations.push(format!(
                        "'{name}' sector {s} reads write {w} after SIGKILL; acknowledged value {} or newer {:?}",
                        st.durable, st.newer
                    ));
                    return Ok(());
                }
                Err(why) => {
                    rep.violations.push(format!("'{name}' sector {s} {why}"));
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

/// The child side: a random workload on the pool in `dir`, reporting on stdout. Runs until
/// killed (or `ops` operations).
pub fn kill_child(dir: &Path, seed: u64, first_id: u64, ops: usize) -> Result<(), String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut p = Pool::open(dir, &OpenOptions::default()).map_err(|e| e.to_string())?;
    let ids: Vec<VolumeId> = (0..VOLUMES)
        .map(|i| p.volume_id(&vol_name(i)))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let out = std::io::stdout();
    let mut out = out.lock();
    let say = |out: &mut std::io::StdoutLock, s: String| -> Result<(), String> {
        writeln!(out, "{s}")
            .and_then(|_| out.flush())
            .map_err(|e| e.to_string())
    };
    say(&mut out, "ready".into())?;
    let mut next = first_id;
    let mut buf = Vec::new();
    for _ in 0..ops {
        let v = rng.gen_range(0..VOLUMES);
        let roll = rng.gen_range(0..100);
        if roll < 70 {
            let len = rng.gen_range(1..=64u64);
            let start = rng.gen_range(0..=VOL_SECTORS - len);
            let w = next;
            next += 1;
            buf.resize(len as usize * SECTOR, 0);
            for i in 0..len as usize {
                sector_content(w, start + i as u64, &mut buf[i * SECTOR..(i + 1) * SECTOR]);
            }
            say(&mut out, format!("W {} {start} {len} {w}", vol_name(v)))?;
            p.write(ids[v], start * SECTOR as u64, &buf)
                .map_err(|e| e.to_string())?;
        } else if roll < 78 {
            let len = rng.gen_range(1..=128u64);
            let start = rng.gen_range(0..=VOL_SECTORS - len);
            say(&mut out, format!("D {} {start} {len}", vol_name(v)))?;
            p.discard(ids[v], start * SECTOR as u64, len * SECTOR as u64)
                .map_err(|e| e.to_string())?;
        } else {
            p.commit().map_err(|e| e.to_string())?;
            say(&mut out, "A".into())?;
        }
    }
    p.commit().map_err(|e| e.to_string())?;
    say(&mut out, "A".into())
}
