//! The pool as `thin_dump` sees it: a superblock and devices, each with runs of mappings.
//!
//! Units follow thin_dump: `data_block_size` is in 512-byte sectors; every block number and
//! run length is in data blocks. Fields dm-thin lacks (names, sizes, read-only flags,
//! origins) are `None`/`false` when the source cannot say; the JSON dump carries them.

use crate::pool::PoolError;
use serde::{Deserialize, Serialize};

/// One pool: thin_dump's `<superblock>` and everything inside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolDump {
    /// thin_dump's `uuid` attribute (empty when the source has none).
    pub uuid: String,
    /// The pool's current snapshot time (dm-thin's superblock `time`).
    pub time: u32,
    /// The pool's transaction id (thinpool: the seq of the commit dumped).
    pub transaction: u64,
    pub flags: u32,
    pub version: u32,
    /// Data block size in 512-byte sectors.
    pub data_block_size: u32,
    /// Data blocks the data device holds.
    pub nr_data_blocks: u64,
    /// By ascending `dev_id`.
    pub devices: Vec<DeviceDump>,
}

/// One thin device (a thinpool volume): thin_dump's `<device>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceDump {
    pub dev_id: u64,
    /// Number of mapped blocks (the sum of the runs' lengths).
    pub mapped_blocks: u64,
    pub transaction: u64,
    pub creation_time: u32,
    pub snap_time: u32,
    /// thinpool's volume name; `None` from an XML dump or dm-thin metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Size in bytes; `None` when the source does not record one (dm-thin keeps sizes in
    /// the table, not the metadata).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default)]
    pub read_only: bool,
    /// The dev_id this one is a snapshot of, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<u64>,
    /// thinpool's creation time, seconds since the epoch (dm-thin's `creation_time` is a
    /// pool time, not a clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<u64>,
    /// By ascending `origin_begin`, not overlapping.
    pub mappings: Vec<Run>,
}

/// `length` consecutive virtual blocks from `origin_begin` mapped to consecutive data blocks
/// from `data_begin`, all with the same `time` (thin_dump's `<range_mapping>`; a run of length
/// 1 is a `<single_mapping>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub origin_begin: u64,
    pub data_begin: u64,
    pub length: u64,
    pub time: u32,
}

impl Run {
    fn single(origin: u64, data: u64, time: u32) -> Run {
        Run {
            origin_begin: origin,
            data_begin: data,
            length: 1,
            time,
        }
    }

    /// Whether mapping `origin -> data` at `time` extends this run by one.
    fn continues(&self, origin: u64, data: u64, time: u32) -> bool {
        self.time == time
            && self.origin_begin + self.length == origin
            && self.data_begin + self.length == data
    }
}

/// Merges mappings that come in ascending virtual order into runs, handing each run out once
/// the next mapping does not continue it (dumps stream their runs this way).
#[derive(Default)]
pub struct RunMerger {
    pending: Option<Run>,
}

impl RunMerger {
    /// Add a mapping; returns the run it completed, if any.
    pub fn push(&mut self, origin: u64, data: u64, time: u32) -> Option<Run> {
        match self.pending.as_mut() {
            Some(r) if r.continues(origin, data, time) => {
                r.length += 1;
                None
            }
            _ => self.pending.replace(Run::single(origin, data, time)),
        }
    }

    /// The last run.
    pub fn finish(self) -> Option<Run> {
        self.pending
    }
}

/// Why a dump or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// Reading the input or writing the output.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The input is not a valid dump (what is wrong, and where when known).
    #[error("invalid dump: {0}")]
    Input(String),
}

impl DumpError {
    pub(crate) fn input(msg: impl Into<String>) -> DumpError {
        DumpError::Input(msg.into())
    }
}

pub type Result<T> = std::result::Result<T, DumpError>;

/// A pool description taken in as it is read (or walked): the superblock, then each device
/// with its runs. Dumps are streamed through this, so neither a dump nor a restore holds a
/// whole pool's mappings in memory.
pub trait DumpSink {
    /// The superblock (its `devices` is empty).
    fn superblock(&mut self, sb: &PoolDump) -> Result<()>;
    /// A device begins (its `mappings` is empty; `mapped_blocks` is what its runs will sum to).
    fn device(&mut self, dev: &DeviceDump) -> Result<()>;
    /// The next run of the current device.
    fn run(&mut self, run: &Run) -> Result<()>;
    fn end_device(&mut self) -> Result<()>;
    fn end(&mut self) -> Result<()>;
}

impl PoolDump {
    /// Feed this description to `sink`, as a reader of it would.
    pub fn replay(&self, sink: &mut dyn DumpSink) -> Result<()> {
        sink.superblock(&self.clone_header())?;
        for d in &self.devices {
            sink.device(&d.clone_header())?;
            for r in &d.mappings {
                sink.run(r)?;
            }
            sink.end_device()?;
        }
        sink.end()
    }

    /// Everything but the devices.
    pub fn clone_header(&self) -> PoolDump {
        PoolDump {
            uuid: self.uuid.clone(),
            devices: Vec::new(),
            ..*self
        }
    }
}

/// A sink that passes everything on and counts the mappings as progress (the total grows
/// by each device's mapped blocks as it begins).
pub struct Counted<'a> {
    inner: &'a mut dyn DumpSink,
    progress: &'a dyn crate::progress::Progress,
    total: u64,
}

impl<'a> Counted<'a> {
    pub fn new(inner: &'a mut dyn DumpSink, progress: &'a dyn crate::progress::Progress) -> Self {
        Counted {
            inner,
            progress,
            total: 0,
        }
    }
}

impl DumpSink for Counted<'_> {
    fn superblock(&mut self, sb: &PoolDump) -> Result<()> {
        self.inner.superblock(sb)
    }
    fn device(&mut self, dev: &DeviceDump) -> Result<()> {
        self.total += dev.mapped_blocks;
        self.progress.set_total(self.total);
        self.inner.device(dev)
    }
    fn run(&mut self, run: &Run) -> Result<()> {
        self.progress.inc(run.length);
        self.inner.run(run)
    }
    fn end_device(&mut self) -> Result<()> {
        self.inner.end_device()
    }
    fn end(&mut self) -> Result<()> {
        self.inner.end()
    }
}

/// A sink that keeps everything: a [`PoolDump`] in memory (tests, small pools).
#[derive(Default)]
pub struct Collect {
    pub dump: Option<PoolDump>,
}

impl DumpSink for Collect {
    fn superblock(&mut self, sb: &PoolDump) -> Result<()> {
        self.dump = Some(sb.clone());
        Ok(())
    }
    fn device(&mut self, dev: &DeviceDump) -> Result<()> {
        self.current().devices.push(dev.clone());
        Ok(())
    }
    fn run(&mut self, run: &Run) -> Result<()> {
        let d = self
            .current()
            .devices
            .last_mut()
            .expect("a run comes inside a device");
        d.mappings.push(*run);
        Ok(())
    }
    fn end_device(&mut self) -> Result<()> {
        Ok(())
    }
    fn end(&mut self) -> Result<()> {
        Ok(())
    }
}

impl Collect {
    fn current(&mut self) -> &mut PoolDump {
        self.dump.as_mut().expect("the superblock comes first")
    }
}

impl DeviceDump {
    /// What dm-thin records of a device; the fields it lacks (name, size, read-only flag,
    /// origin, creation clock time) are empty, and the mappings follow.
    pub fn dm(
        dev_id: u64,
        mapped_blocks: u64,
        transaction: u64,
        creation_time: u32,
        snap_time: u32,
    ) -> DeviceDump {
        DeviceDump {
            dev_id,
            mapped_blocks,
            transaction,
            creation_time,
            snap_time,
            name: None,
            size: None,
            read_only: false,
            origin: None,
            created: None,
            mappings: Vec::new(),
        }
    }

    /// Everything but the mappings.
    pub fn clone_header(&self) -> DeviceDump {
        DeviceDump {
            name: self.name.clone(),
            mappings: Vec::new(),
            ..*self
        }
    }

    /// Appends one mapping, extending the last run when it continues it (runs merged, as
    /// thin_dump merges them). Mappings must come in ascending virtual order.
    pub fn push_mapping(&mut self, origin: u64, data: u64, time: u32) {
        self.mapped_blocks += 1;
        match self.mappings.last_mut() {
            Some(last) if last.continues(origin, data, time) => last.length += 1,
            _ => self.mappings.push(Run::single(origin, data, time)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> DeviceDump {
        DeviceDump::dm(0, 0, 0, 0, 0)
    }

    #[test]
    fn consecutive_mappings_merge_into_runs() {
        let mut d = dev();
        for (o, b, t) in [(0, 10, 1), (1, 11, 1), (2, 12, 2), (4, 13, 2), (5, 14, 2)] {
            d.push_mapping(o, b, t);
        }
        let runs: Vec<_> = d
            .mappings
            .iter()
            .map(|r| (r.origin_begin, r.data_begin, r.length, r.time))
            .collect();
        assert_eq!(runs, vec![(0, 10, 2, 1), (2, 12, 1, 2), (4, 13, 2, 2)]);
        assert_eq!(d.mapped_blocks, 5);
    }
}
