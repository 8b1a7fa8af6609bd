//! Request counters of a running server, per volume, for `thinpool iostat` (docs/nbd.md,
//! "iostat"): operations, bytes and latency histograms, recorded by the workers with
//! relaxed atomic adds (no lock on the data path) and read through the control socket as
//! one JSON sample. A client subtracts two samples to get rates over the time between.
//! Latency runs from the request header's arrival to the end of its reply's write, so it
//! includes queueing behind other requests of the connection, not the network.

use crate::histogram::{Counts, Histogram};
use crate::pool::stats::PoolStats;
use crate::pool::VolumeId;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Volumes whose counters are kept when none of their connections is open; beyond it, the
/// counters of detached volumes are dropped (memory stays bounded however many volumes a
/// long-running server sees).
const MAX_IDLE_VOLUMES: usize = 1024;

/// What happened to one kind of request.
#[derive(Default)]
pub struct OpStats {
    ops: AtomicU64,
    bytes: AtomicU64,
    latency: Histogram,
}

impl OpStats {
    fn record(&self, bytes: u64, took: Duration) {
        self.latency.record(took);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.ops.fetch_add(1, Ordering::Relaxed);
    }

    fn sample(&self) -> OpSample {
        OpSample {
            ops: self.ops.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            latency_us: self.latency.snapshot().to_sparse(),
        }
    }
}

/// One volume's counters since the server started.
#[derive(Default)]
pub struct VolumeStats {
    pub read: OpStats,
    pub write: OpStats,
    /// TRIM and WRITE_ZEROES (bytes: their lengths).
    pub discard: OpStats,
    pub flush: OpStats,
}

/// Kinds of request, as counted.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    Read,
    Write,
    Discard,
    Flush,
}

impl VolumeStats {
    pub fn record(&self, op: Op, bytes: u64, took: Duration) {
        match op {
            Op::Read => &self.read,
            Op::Write => &self.write,
            Op::Discard => &self.discard,
            Op::Flush => &self.flush,
        }
        .record(bytes, took)
    }
}

/// The server's counters.
pub struct IoStats {
    started: Instant,
    volumes: Mutex<BTreeMap<VolumeId, (String, Arc<VolumeStats>)>>,
    pool: Arc<PoolStats>,
}

impl IoStats {
    pub fn new(pool: Arc<PoolStats>) -> IoStats {
        IoStats {
            started: Instant::now(),
            volumes: Mutex::new(BTreeMap::new()),
            pool,
        }
    }

    /// The counters of volume `id` (named `name`), made on first use.
    pub fn volume(&self, id: VolumeId, name: &str) -> Arc<VolumeStats> {
        let mut v = self.volumes.lock().unwrap_or_else(|e| e.into_inner());
        if !v.contains_key(&id) && v.len() >= MAX_IDLE_VOLUMES {
            // Only this map holds the counters of a volume no connection has open.
            v.retain(|_, (_, s)| Arc::strong_count(s) > 1);
        }
        let e = v
            .entry(id)
            .or_insert_with(|| (name.to_string(), Arc::default()));
        e.0 = name.to_string();
        e.1.clone()
    }

    /// Everything, now.
    pub fn sample(&self) -> Sample {
        let volumes = self
            .volumes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, (name, s))| VolumeSample {
                id: id.0,
                name: name.clone(),
                read: s.read.sample(),
                write: s.write.sample(),
                discard: s.discard.sample(),
                flush: s.flush.sample(),
            })
            .collect();
        let (commits, data_syncs, lat) = self.pool.commits();
        Sample {
            version: SAMPLE_VERSION,
            uptime_s: self.started.elapsed().as_secs_f64(),
            volumes,
            commits: CommitSample {
                count: commits,
                data_syncs,
                latency_us: lat.to_sparse(),
            },
            space: self.pool.space().into(),
        }
    }
}

/// Bumped when a sample's meaning changes; `iostat` refuses another version.
pub const SAMPLE_VERSION: u32 = 1;

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct OpSample {
    pub ops: u64,
    pub bytes: u64,
    /// `[bucket, count]` pairs (`histogram::Counts::to_sparse`).
    pub latency_us: Vec<[u64; 2]>,
}

impl OpSample {
    pub fn latency(&self) -> Result<Counts, String> {
        Counts::from_sparse(&self.latency_us)
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VolumeSample {
    pub id: u64,
    pub name: String,
    pub read: OpSample,
    pub write: OpSample,
    pub discard: OpSample,
    pub flush: OpSample,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct CommitSample {
    pub count: u64,
    pub data_syncs: u64,
    pub latency_us: Vec<[u64; 2]>,
}

#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct SpaceSample {
    pub block_size: u64,
    pub data_used_blocks: u64,
    pub data_total_blocks: u64,
    pub metadata_used_blocks: u64,
    pub metadata_total_blocks: u64,
    pub warn_at_pct: Option<u8>,
}

impl From<crate::pool::stats::SpaceFigures> for SpaceSample {
    fn from(s: crate::pool::stats::SpaceFigures) -> SpaceSample {
        SpaceSample {
            block_size: s.block_size,
            data_used_blocks: s.data_used,
            data_total_blocks: s.data_total,
            metadata_used_blocks: s.meta_used,
            metadata_total_blocks: s.meta_total,
            warn_at_pct: s.warn_at,
        }
    }
}

/// What the control socket answers to [`STATS_REQUEST`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    pub version: u32,
    /// Seconds since the server started (the clock rates are computed on).
    pub uptime_s: f64,
    pub volumes: Vec<VolumeSample>,
    pub commits: CommitSample,
    pub space: SpaceSample,
}

/// The control request for a sample: answered by the server itself, without the pool
/// lock (so an `iostat` never pauses I/O), never by the CLI handler.
pub const STATS_REQUEST: &str = "--iostat-sample";
