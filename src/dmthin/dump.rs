//! A pool walked into a [`DumpSink`]: its volumes in id order, each volume's mapping tree in
//! virtual-block order, consecutive mappings merged into runs. Memory stays bounded: one
//! pending run at a time, the tree read through the pool's block cache.

use super::model::{DeviceDump, DumpError, DumpSink, PoolDump, Result, RunMerger};
use crate::meta::block::get_u64;
use crate::meta::btree::Btree;
use crate::pool::trees::{unpack_mapping, MAPPING};
use crate::pool::{Pool, PoolError};

/// dm-thin metadata version the XML names (what thin_dump writes for current pools).
pub const DM_VERSION: u32 = 2;

/// Counts of what a dump wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DumpStats {
    pub devices: u64,
    pub mappings: u64,
    pub runs: u64,
}

/// Walk `pool` (its open state: the newest commit, or the one it was opened at) into `sink`.
pub fn dump(pool: &mut Pool, sink: &mut dyn DumpSink) -> Result<DumpStats> {
    let info = pool.info()?;
    let block_sectors = info.block_size / 512;
    sink.superblock(&PoolDump {
        uuid: info.uuid,
        time: pool.time as u32,
        transaction: info.seq,
        flags: 0,
        version: DM_VERSION,
        data_block_size: block_sectors as u32,
        nr_data_blocks: info.data_blocks_total,
        devices: Vec::new(),
    })?;
    let mut stats = DumpStats::default();
    for (id, d) in pool.volumes()? {
        sink.device(&DeviceDump {
            dev_id: id.0,
            mapped_blocks: d.mapped,
            transaction: 0,
            // thinpool does not keep the pool time of a volume's creation; its snapshot time
            // is the closest it has (equal to it until the volume is snapshotted).
            creation_time: d.snap_time,
            snap_time: d.snap_time,
            name: Some(d.name.clone()),
            size: Some(d.size),
            read_only: d.read_only,
            origin: d.origin.map(|o| o.0),
            created: Some(d.created),
            mappings: Vec::new(),
        })?;
        let root = pool.vol_root(id)?;
        let mut runs = RunMerger::default();
        let mut failed: Option<DumpError> = None;
        let mut mapped = 0u64;
        pool.tm
            .btree_walk(root, MAPPING, 0, u64::MAX, &mut |vb, v| {
                let (b, time) = unpack_mapping(get_u64(v, 0));
                mapped += 1;
                let Some(done) = runs.push(vb, b.0, time) else {
                    return true;
                };
                stats.runs += 1;
                match sink.run(&done) {
                    Ok(()) => true,
                    Err(e) => {
                        failed = Some(e);
                        false
                    }
                }
            })
            .map_err(PoolError::from)?;
        if let Some(e) = failed {
            return Err(e);
        }
        if let Some(r) = runs.finish() {
            stats.runs += 1;
            sink.run(&r)?;
        }
        if mapped != d.mapped {
            // The header already went out with the details' count: a dump that disagreed
            // with itself would be refused by every reader.
            return Err(DumpError::Pool(PoolError::Meta(
                crate::meta::MetaError::Corrupt {
                    block: None,
                    reason: format!(
                    "volume '{}' records {} mapped blocks but its mapping tree holds {mapped}; \
                     run `thinpool check`",
                    d.name, d.mapped
                ),
                },
            )));
        }
        stats.mappings += mapped;
        stats.devices += 1;
        sink.end_device()?;
    }
    sink.end()?;
    Ok(stats)
}
