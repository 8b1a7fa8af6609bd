//! A new pool built from a dump (XML or JSON, read as it streams in): every device becomes a
//! volume with the same id, its mappings built bottom-up into full leaves, every data block
//! referenced as often as the dump maps it (so blocks the dump shares stay shared), and the
//! whole pool committed once, as its first commit. A dump that fails validation, or a
//! restore that fails for any other reason, leaves nothing behind.
//!
//! Validation is the same on both passes: [`survey`] reads a dump without building anything
//! (a restore from a file runs it first, so bad input is refused before any file is made,
//! and the metadata is sized from what it found); [`restore`] checks again as it builds
//! (input from a pipe is read once).

use super::model::{DeviceDump, DumpError, DumpSink, PoolDump, Result, Run};
use crate::meta::{DataBlock, MetaError};
use crate::pool::details::{validate_name, Details};
use crate::pool::sizing::restore_estimate;
use crate::pool::{
    validate_block_size, CreateOptions, NewPool, Pool, PoolError, VolumeBuilder, VolumeId,
    DEFAULT_CACHE_BLOCKS,
};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// The largest pool time and snapshot time a mapping can hold (24 bits, as in dm-thin).
const MAX_TIME: u32 = 0xff_ffff;

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Adopt this data file in place (the pool's `data` becomes a symlink to it) instead of
    /// making an empty one.
    pub data: Option<PathBuf>,
    /// The block size the caller expects; a dump that says otherwise is refused.
    pub block_size: Option<u64>,
    /// Metadata size; default: what [`restore_estimate`] gives for the survey.
    pub metadata_size: Option<u64>,
    pub cache_blocks: usize,
    /// Names and sizes by dev_id (a `--names` file), overriding what the dump says; every
    /// dev_id named must be in the dump.
    pub names: BTreeMap<u64, (String, Option<u64>)>,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            data: None,
            block_size: None,
            metadata_size: None,
            cache_blocks: DEFAULT_CACHE_BLOCKS,
            names: BTreeMap::new(),
        }
    }
}

/// What a dump holds, found by [`survey`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Survey {
    pub devices: u64,
    pub mappings: u64,
    pub runs: u64,
    pub nr_data_blocks: u64,
    pub block_size: u64,
}

/// What a restore made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    pub survey: Survey,
    pub seq: u64,
    pub data_blocks_used: u64,
    pub metadata_blocks_used: u64,
    pub metadata_blocks_total: u64,
}

/// Read a dump through `feed` without building anything: every check a restore makes.
pub fn survey(
    opts: &RestoreOptions,
    feed: impl FnOnce(&mut dyn DumpSink) -> Result<()>,
) -> Result<Survey> {
    let mut v = Validator::for_options(opts);
    feed(&mut v)?;
    v.finished()
}

/// Build a new pool in `dir` from the dump `feed` reads. `survey`: what a first pass found
/// (it sizes the metadata); `None` for input that can be read only once.
pub fn restore(
    dir: &Path,
    opts: &RestoreOptions,
    survey: Option<Survey>,
    feed: impl FnOnce(&mut dyn DumpSink) -> Result<()>,
) -> Result<Restored> {
    let mut b = Builder {
        dir: dir.to_path_buf(),
        opts: opts.clone(),
        survey,
        v: Validator::for_options(opts),
        new: None,
        vol: None,
        metadata_size: 0,
    };
    feed(&mut b).map_err(|e| b.explain(e))?;
    let found = b.v.finished()?;
    let mut new = b
        .new
        .take()
        .ok_or_else(|| DumpError::input("no superblock"))?;
    new.pool().set_time(b.v.max_time);
    let metadata_size = b.metadata_size;
    let mut pool = new
        .finish()
        .map_err(|e| explain_space(e.into(), metadata_size))?;
    let info = pool.info()?;
    Ok(Restored {
        survey: found,
        seq: info.seq,
        data_blocks_used: info.data_blocks_used,
        metadata_blocks_used: info.metadata_blocks_used,
        metadata_blocks_total: info.metadata_blocks_total,
    })
}

/// The device being read.
struct Current {
    dev: DeviceDump,
    name: String,
    /// Mappings read so far, and the first virtual block past the last run.
    mapped: u64,
    next_vb: u64,
}

/// The checks every dump passes, in either pass.
#[derive(Default)]
struct Validator {
    expect_block_size: Option<u64>,
    names_given: BTreeMap<u64, (String, Option<u64>)>,
    sb: Option<Survey>,
    dev_ids: HashSet<u64>,
    names: HashSet<String>,
    origins: Vec<(u64, u64)>,
    cur: Option<Current>,
    devices: u64,
    mappings: u64,
    runs: u64,
    max_time: u32,
    ended: bool,
}

impl Validator {
    fn for_options(opts: &RestoreOptions) -> Validator {
        Validator {
            expect_block_size: opts.block_size,
            names_given: opts.names.clone(),
            ..Validator::default()
        }
    }

    fn superblock(&mut self, sb: &PoolDump) -> Result<Survey> {
        let bad = |m: String| Err(DumpError::input(format!("<superblock>: {m}")));
        if self.sb.is_some() {
            return bad("a second superblock".into());
        }
        let bs = sb.data_block_size as u64 * 512;
        if let Err(e) = validate_block_size(bs) {
            return bad(format!(
                "data_block_size {} sectors ({bs} bytes) cannot be a thinpool block size: {e}",
                sb.data_block_size
            ));
        }
        if let Some(want) = self.expect_block_size.filter(|&w| w != bs) {
            return bad(format!(
                "the dump's block size is {bs} bytes ({} sectors), not the {want} that \
                 --block-size gives",
                sb.data_block_size
            ));
        }
        if sb.nr_data_blocks == 0 || sb.nr_data_blocks >= 1 << 40 {
            return bad(format!(
                "nr_data_blocks {} is not between 1 and 2^40",
                sb.nr_data_blocks
            ));
        }
        if sb.time > MAX_TIME {
            return bad(format!("time {} does not fit in 24 bits", sb.time));
        }
        self.max_time = sb.time;
        let s = Survey {
            nr_data_blocks: sb.nr_data_blocks,
            block_size: bs,
            ..Survey::default()
        };
        self.sb = Some(s);
        Ok(s)
    }

    fn device(&mut self, d: &DeviceDump) -> Result<()> {
        let bad = |m: String| Err(DumpError::input(format!("device {}: {m}", d.dev_id)));
        if self.sb.is_none() || self.ended {
            return bad("outside the superblock".into());
        }
        if d.dev_id >= u64::MAX - 1 {
            return bad("the id is too large".into());
        }
        if !self.dev_ids.insert(d.dev_id) {
            return bad("a second device with this id".into());
        }
        if d.snap_time > MAX_TIME {
            return bad(format!("snap_time {} does not fit in 24 bits", d.snap_time));
        }
        let mut d = d.clone();
        if let Some((name, size)) = self.names_given.get(&d.dev_id) {
            d.name = Some(name.clone());
            d.size = size.or(d.size);
        }
        let name = d.name.clone().unwrap_or_else(|| d.dev_id.to_string());
        if let Err(why) = validate_name(&name) {
            return bad(format!("name '{name}': {why}"));
        }
        if !self.names.insert(name.clone()) {
            return bad(format!("a second device named '{name}'"));
        }
        if let Some(o) = d.origin {
            self.origins.push((d.dev_id, o));
        }
        self.max_time = self.max_time.max(d.snap_time);
        self.devices += 1;
        self.cur = Some(Current {
            dev: d,
            name,
            mapped: 0,
            next_vb: 0,
        });
        Ok(())
    }

    fn run(&mut self, r: &Run) -> Result<()> {
        let nr_data_blocks = self.sb.map_or(0, |s| s.nr_data_blocks);
        let Some(cur) = self.cur.as_mut() else {
            return Err(DumpError::input("a mapping outside any device"));
        };
        // Messages are made only on failure: this runs once per run of a dump.
        let bad = |m: &str| {
            Err(DumpError::input(format!(
                "device {}: mapping of blocks {}+{} to data block {}: {m}",
                cur.dev.dev_id, r.origin_begin, r.length, r.data_begin
            )))
        };
        if r.length == 0 {
            return bad("its length is zero");
        }
        if r.origin_begin < cur.next_vb {
            return bad(&format!(
                "mappings must ascend without overlapping (the last one ended at block {})",
                cur.next_vb
            ));
        }
        let Some(vb_end) = r
            .origin_begin
            .checked_add(r.length)
            .filter(|&e| e < 1 << 48)
        else {
            return bad("past the largest volume");
        };
        match r.data_begin.checked_add(r.length) {
            Some(end) if end <= nr_data_blocks => {}
            _ => return bad(&format!("past the pool's {nr_data_blocks} data blocks")),
        }
        if r.time > MAX_TIME {
            return bad(&format!("time {} does not fit in 24 bits", r.time));
        }
        self.max_time = self.max_time.max(r.time);
        cur.mapped += r.length;
        cur.next_vb = vb_end;
        self.mappings += r.length;
        self.runs += 1;
        Ok(())
    }

    /// The device just read, checked whole: its details as the pool will hold them.
    fn end_device(&mut self) -> Result<(VolumeId, Details)> {
        let block_size = self.sb.map_or(0, |s| s.block_size);
        let Some(cur) = self.cur.take() else {
            return Err(DumpError::input("the end of a device that did not begin"));
        };
        let bad = |m: String| Err(DumpError::input(format!("device {}: {m}", cur.dev.dev_id)));
        if cur.mapped != cur.dev.mapped_blocks {
            return bad(format!(
                "mapped_blocks says {} but its mappings cover {}",
                cur.dev.mapped_blocks, cur.mapped
            ));
        }
        let covered = cur.next_vb.max(1) * block_size;
        let size = match cur.dev.size {
            Some(s) if s < cur.next_vb * block_size => {
                return bad(format!(
                    "its size {s} is smaller than its mappings, which reach byte {}",
                    cur.next_vb * block_size
                ))
            }
            Some(0) => return bad("its size is zero".into()),
            Some(s) => s,
            None => covered,
        };
        if let Err(e) = crate::pool::check_size_fits(size, block_size) {
            return bad(e.to_string());
        }
        Ok((
            VolumeId(cur.dev.dev_id),
            Details {
                size,
                mapped: cur.mapped,
                created: cur.dev.created.unwrap_or_else(crate::pool::now),
                snap_time: cur.dev.snap_time,
                read_only: cur.dev.read_only,
                origin: cur.dev.origin.map(VolumeId),
                created_seq: 0,
                name: cur.name,
            },
        ))
    }

    fn end(&mut self) -> Result<()> {
        if self.cur.is_some() {
            return Err(DumpError::input("the dump ends inside a device"));
        }
        if let Some(id) = self
            .names_given
            .keys()
            .find(|id| !self.dev_ids.contains(id))
        {
            return Err(DumpError::input(format!(
                "the names given name device {id}, which the dump does not have"
            )));
        }
        for &(dev, origin) in &self.origins {
            if !self.dev_ids.contains(&origin) || origin == dev {
                return Err(DumpError::input(format!(
                    "device {dev}: its origin {origin} is not another device of the dump"
                )));
            }
        }
        self.ended = true;
        Ok(())
    }

    fn finished(&self) -> Result<Survey> {
        let Some(sb) = self.sb else {
            return Err(DumpError::input("the dump has no superblock"));
        };
        if !self.ended {
            return Err(DumpError::input("the dump ends before its superblock does"));
        }
        Ok(Survey {
            devices: self.devices,
            mappings: self.mappings,
            runs: self.runs,
            ..sb
        })
    }
}

impl DumpSink for Validator {
    fn superblock(&mut self, sb: &PoolDump) -> Result<()> {
        Validator::superblock(self, sb).map(|_| ())
    }
    fn device(&mut self, d: &DeviceDump) -> Result<()> {
        Validator::device(self, d)
    }
    fn run(&mut self, r: &Run) -> Result<()> {
        Validator::run(self, r)
    }
    fn end_device(&mut self) -> Result<()> {
        Validator::end_device(self).map(|_| ())
    }
    fn end(&mut self) -> Result<()> {
        Validator::end(self)
    }
}

/// The restoring sink: validates each event, then builds.
struct Builder {
    dir: PathBuf,
    opts: RestoreOptions,
    survey: Option<Survey>,
    v: Validator,
    new: Option<NewPool>,
    vol: Option<VolumeBuilder>,
    metadata_size: u64,
}

impl Builder {
    fn pool(&mut self) -> &mut Pool {
        self.new
            .as_mut()
            .expect("the superblock made the pool")
            .pool()
    }

    fn explain(&self, e: DumpError) -> DumpError {
        explain_space(e, self.metadata_size)
    }
}

/// A restore that ran out of metadata says how much it had and what to pass.
fn explain_space(e: DumpError, metadata_size: u64) -> DumpError {
    match e {
        DumpError::Pool(PoolError::Meta(MetaError::NoMetadataSpace)) => DumpError::input(format!(
            "the dump needs more metadata than the {metadata_size} bytes this restore gave it: \
             rerun with a larger --metadata-size"
        )),
        e => e,
    }
}

impl DumpSink for Builder {
    fn superblock(&mut self, sb: &PoolDump) -> Result<()> {
        let s = self.v.superblock(sb)?;
        let (devices, mappings) = self.survey.map_or((0, 0), |s| (s.devices, s.mappings));
        self.metadata_size = self
            .opts
            .metadata_size
            .unwrap_or_else(|| restore_estimate(s.nr_data_blocks, devices, mappings));
        let mut c = CreateOptions::new(s.nr_data_blocks * s.block_size);
        c.block_size = s.block_size;
        c.metadata_size = Some(self.metadata_size);
        c.cache_blocks = self.opts.cache_blocks;
        c.data_file = self.opts.data.clone();
        self.new = Some(Pool::create_begin(&self.dir, &c)?);
        Ok(())
    }

    fn device(&mut self, d: &DeviceDump) -> Result<()> {
        self.v.device(d)?;
        self.vol = Some(VolumeBuilder::new());
        Ok(())
    }

    fn run(&mut self, r: &Run) -> Result<()> {
        self.v.run(r)?;
        let mut vol = self.vol.take().expect("a validated run is inside a device");
        let res = (|| {
            let pool = self.pool();
            for i in 0..r.length {
                vol.map(
                    pool,
                    r.origin_begin + i,
                    DataBlock(r.data_begin + i),
                    r.time,
                )?;
            }
            Ok::<_, PoolError>(())
        })();
        self.vol = Some(vol);
        Ok(res?)
    }

    fn end_device(&mut self) -> Result<()> {
        let (id, d) = self.v.end_device()?;
        let vol = self.vol.take().expect("a validated device has a builder");
        vol.finish(self.pool(), id, d)?;
        Ok(())
    }

    fn end(&mut self) -> Result<()> {
        self.v.end()
    }
}
