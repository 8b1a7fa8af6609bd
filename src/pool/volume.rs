//! Volume management: create, snapshot, remove, resize, rename, rollback, list.
//! Each operation is one transaction, committed before it returns.

use super::details::{validate_name, Access, Details, IoVolume, DETAILS};
use super::trees::{DEV_ROOTS, MAPPING};
use super::{now, Pool, PoolError, Result, VolumeId};
use crate::meta::btree::{Btree, Node};
use crate::meta::journal::BlockRef;
use crate::meta::journal::{decode_ref, encode_ref};
use crate::meta::DataBlock;

/// What `thinpool list` and `info` show of a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    pub id: VolumeId,
    pub name: String,
    pub size: u64,
    pub mapped_blocks: u64,
    /// Mapped blocks no other volume shares (`None` when not computed).
    pub exclusive_blocks: u64,
    pub shared_blocks: u64,
    pub origin: Option<String>,
    pub read_only: bool,
    pub created: u64,
}

impl Pool {
    /// Every volume's id and details, in id order.
    pub fn volumes(&mut self) -> Result<Vec<(VolumeId, Details)>> {
        let mut out = Vec::new();
        self.tm
            .btree_walk(self.details_root, DETAILS, 0, u64::MAX, &mut |k, v| {
                out.push((VolumeId(k), Details::decode(v)));
                true
            })?;
        Ok(out)
    }

    /// The names of every volume, in id order.
    pub fn volume_names(&mut self) -> Result<Vec<String>> {
        Ok(self.volumes()?.into_iter().map(|(_, d)| d.name).collect())
    }

    /// Resolve a volume name.
    pub fn find(&mut self, name: &str) -> Result<(VolumeId, Details)> {
        let mut found = None;
        self.tm
            .btree_walk(self.details_root, DETAILS, 0, u64::MAX, &mut |k, v| {
                let d = Details::decode(v);
                if d.name == name {
                    found = Some((VolumeId(k), d));
                    false
                } else {
                    true
                }
            })?;
        found.ok_or_else(|| PoolError::NoSuchVolume(name.to_string()))
    }

    /// Resolve a volume name to its id.
    pub fn volume_id(&mut self, name: &str) -> Result<VolumeId> {
        Ok(self.find(name)?.0)
    }

    pub fn details(&mut self, id: VolumeId) -> Result<Details> {
        let v = self
            .tm
            .btree_lookup(self.details_root, DETAILS, id.0)?
            .ok_or_else(|| PoolError::NoSuchVolume(format!("#{id}")))?;
        Ok(Details::decode(&v))
    }

    pub(crate) fn put_details(&mut self, id: VolumeId, d: &Details) -> Result<()> {
        let mut root = self.details_root;
        self.tm
            .btree_insert(&mut root, DETAILS, id.0, &d.encode())?;
        self.set_details_root(root);
        Ok(())
    }

    pub(crate) fn vol_root(&mut self, id: VolumeId) -> Result<BlockRef> {
        if let Some((mid, r)) = self.memo_root {
            if mid == id {
                return Ok(r);
            }
        }
        let r = self
            .tm
            .btree_lookup_with(self.top_root, DEV_ROOTS, id.0, decode_ref)?
            .ok_or_else(|| PoolError::NoSuchVolume(format!("#{id}")))?;
        self.memo_root = Some((id, r));
        Ok(r)
    }

    /// Every change of the details tree's root goes through here (see `memo_vol`).
    pub(crate) fn set_details_root(&mut self, r: BlockRef) {
        self.details_root = r;
        self.memo_vol = None;
    }

    /// Every change of the top-level tree's root goes through here (see `memo_root`). A
    /// mapping tree changed in place keeps its root, so the memo stays true for it.
    pub(crate) fn set_top_root(&mut self, r: BlockRef) {
        self.top_root = r;
        self.memo_root = None;
    }

    /// The one place a data request (read, write, write-zeroes, discard) resolves its
    /// volume: `[offset, offset+len)` must lie inside it and, for `Access::Write`, it must
    /// be writable. Decodes only what the data path needs (the name only for an error).
    pub(crate) fn resolve(
        &mut self,
        id: VolumeId,
        offset: u64,
        len: u64,
        access: Access,
    ) -> Result<IoVolume> {
        let v = match self.memo_vol {
            Some((mid, v)) if mid == id => v,
            _ => {
                let v = self
                    .tm
                    .btree_lookup_with(self.details_root, DETAILS, id.0, IoVolume::decode)?
                    .ok_or_else(|| PoolError::NoSuchVolume(format!("#{id}")))?;
                self.memo_vol = Some((id, v));
                v
            }
        };
        if access == Access::Write && v.read_only {
            return Err(PoolError::ReadOnlyVolume(self.details(id)?.name));
        }
        match offset.checked_add(len) {
            Some(end) if end <= v.size => Ok(v),
            _ => Err(PoolError::OutOfRange {
                name: self.details(id)?.name,
                offset,
                len,
                size: v.size,
            }),
        }
    }

    pub(crate) fn set_vol_root(&mut self, id: VolumeId, r: BlockRef) -> Result<Option<Vec<u8>>> {
        let mut top = self.top_root;
        let old = self
            .tm
            .btree_insert(&mut top, DEV_ROOTS, id.0, &encode_ref(r))?;
        self.set_top_root(top);
        Ok(old)
    }

    fn check_new_name(&mut self, name: &str) -> Result<()> {
        validate_name(name).map_err(|why| PoolError::InvalidName {
            name: name.to_string(),
            why,
        })?;
        match self.find(name) {
            Ok(_) => Err(PoolError::VolumeExists(name.to_string())),
            Err(PoolError::NoSuchVolume(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Advance the pool's snapshot time (24 bits in mappings, like dm-thin).
    fn bump_time(&mut self) -> Result<()> {
        if self.time >= 0xff_ffff {
            return Err(PoolError::TooManySnapshots);
        }
        self.time += 1;
        Ok(())
    }

    fn new_id(&mut self) -> Result<VolumeId> {
        if self.next_id >= u64::MAX - 1 {
            return Err(PoolError::TooManyVolumes);
        }
        let id = VolumeId(self.next_id);
        self.next_id += 1;
        Ok(id)
    }

    /// Create a thin volume of `size` bytes (it may exceed the pool's capacity).
    pub fn create_volume(&mut self, name: &str, size: u64, read_only: bool) -> Result<VolumeId> {
        if size == 0 {
            return Err(PoolError::InvalidSize(
                "a volume size must be greater than zero".into(),
            ));
        }
        check_size_fits(size, self.block_size())?;
        self.atomically(|p| {
            p.check_new_name(name)?;
            let id = p.new_id()?;
            let root = p.tm.btree_empty(MAPPING)?;
            p.set_vol_root(id, root)?;
            let d = Details {
                size,
                mapped: 0,
                created: now(),
                snap_time: p.time as u32,
                read_only,
                origin: None,
                created_seq: p.tm.generation(),
                name: name.to_string(),
            };
            p.put_details(id, &d)?;
            Ok(id)
        })
    }

    /// Snapshot `src` as `new`: O(1) whatever the size (one more reference on the root).
    /// Every write done before this call is in the snapshot.
    pub fn snapshot(&mut self, src: &str, new: &str, read_only: bool) -> Result<VolumeId> {
        self.atomically(|p| p.snapshot_in(src, new, read_only))
    }

    /// Remove volume `gone` and snapshot `src` as `new` in one transaction: `import_diff`
    /// swaps its guard for the diff's end snapshot this way, so no crash leaves the import
    /// done with neither (and `new` may reuse the guard's name).
    pub(crate) fn replace_snapshot(
        &mut self,
        gone: &str,
        src: &str,
        new: &str,
        read_only: bool,
    ) -> Result<VolumeId> {
        self.atomically(|p| {
            p.remove_in(gone)?;
            p.snapshot_in(src, new, read_only)
        })
    }

    fn snapshot_in(&mut self, src: &str, new: &str, read_only: bool) -> Result<VolumeId> {
        let (sid, sd) = self.find(src)?;
        self.check_new_name(new)?;
        let root = self.vol_root(sid)?;
        self.tm.btree_inc(root);
        let id = self.new_id()?;
        self.set_vol_root(id, root)?;
        self.bump_time()?;
        // Both sides now share every mapping: neither may write one in place again.
        let mut sd = sd;
        sd.snap_time = self.time as u32;
        self.put_details(sid, &sd)?;
        let d = Details {
            size: sd.size,
            mapped: sd.mapped,
            created: now(),
            snap_time: self.time as u32,
            read_only,
            origin: Some(sid),
            created_seq: self.tm.generation(),
            name: new.to_string(),
        };
        self.put_details(id, &d)?;
        Ok(id)
    }

    /// Remove a volume; blocks no other volume shares are freed.
    pub fn remove_volume(&mut self, name: &str) -> Result<()> {
        self.atomically(|p| p.remove_in(name))
    }

    fn remove_in(&mut self, name: &str) -> Result<()> {
        let (id, _) = self.find(name)?;
        let mut top = self.top_root;
        let old = self.tm.btree_remove(&mut top, DEV_ROOTS, id.0)?;
        self.set_top_root(top);
        if let Some(v) = old {
            self.tm.dec_value(DEV_ROOTS, &v)?;
        }
        let mut droot = self.details_root;
        self.tm.btree_remove(&mut droot, DETAILS, id.0)?;
        self.set_details_root(droot);
        // Snapshots of the removed volume become independent volumes.
        for (cid, mut cd) in self.volumes()? {
            if cd.origin == Some(id) {
                cd.origin = None;
                self.put_details(cid, &cd)?;
            }
        }
        Ok(())
    }

    pub fn rename(&mut self, old: &str, new: &str) -> Result<()> {
        self.atomically(|p| {
            let (id, mut d) = p.find(old)?;
            if old == new {
                return Ok(());
            }
            p.check_new_name(new)?;
            d.name = new.to_string();
            p.put_details(id, &d)
        })
    }

    pub fn set_read_only(&mut self, name: &str, read_only: bool) -> Result<()> {
        self.atomically(|p| {
            let (id, mut d) = p.find(name)?;
            d.read_only = read_only;
            p.put_details(id, &d)
        })
    }

    /// Grow or shrink a volume. Shrinking unmaps every block past the new end, and zeroes the
    /// rest of a partly kept last block so a later grow reads zeros there.
    pub fn resize(&mut self, name: &str, size: u64) -> Result<()> {
        if size == 0 {
            return Err(PoolError::InvalidSize(
                "a volume size must be greater than zero".into(),
            ));
        }
        check_size_fits(size, self.block_size())?;
        self.atomically(|p| {
            let (id, d) = p.find(name)?;
            if d.read_only {
                return Err(PoolError::ReadOnlyVolume(name.to_string()));
            }
            if size < d.size {
                let bs = p.block_size();
                let tail = size % bs;
                if tail != 0 {
                    let v = IoVolume::from(&d);
                    let copies = p.zeroing_copies(id, &v, &[size / bs])?;
                    p.ensure_data_room(copies)?;
                    let end = (size - tail + bs).min(d.size);
                    p.zero_range(id, &v, size, end - size)?;
                }
                let first_gone = size.div_ceil(bs);
                p.unmap_blocks(id, first_gone, u64::MAX)?;
            }
            let mut d = p.details(id)?;
            d.size = size;
            p.put_details(id, &d)
        })
    }

    /// Roll `vol` back to its snapshot `snap` (O(1): `vol` takes `snap`'s tree).
    pub fn rollback(&mut self, vol: &str, snap: &str) -> Result<()> {
        self.atomically(|p| {
            let (vid, mut vd) = p.find(vol)?;
            let (sid, sd) = p.find(snap)?;
            if vd.read_only {
                return Err(PoolError::ReadOnlyVolume(vol.to_string()));
            }
            // `snap` must descend from `vol` through snapshot origins.
            let mut cur = sd.origin;
            let mut hops = 0;
            while cur != Some(vid) {
                let Some(c) = cur.filter(|_| hops <= 100_000) else {
                    return Err(PoolError::NotASnapshot {
                        vol: vol.to_string(),
                        snap: snap.to_string(),
                    });
                };
                cur = p.details(c).ok().and_then(|d| d.origin);
                hops += 1;
            }
            let sroot = p.vol_root(sid)?;
            p.tm.btree_inc(sroot);
            if let Some(old) = p.set_vol_root(vid, sroot)? {
                p.tm.dec_value(DEV_ROOTS, &old)?;
            }
            vd.size = sd.size;
            vd.mapped = sd.mapped;
            p.bump_time()?;
            vd.snap_time = p.time as u32;
            p.put_details(vid, &vd)?;
            let mut sd = sd;
            sd.snap_time = p.time as u32;
            p.put_details(sid, &sd)
        })
    }

    /// Mapped, exclusive and shared block counts of a volume (walks its tree).
    pub fn usage(&mut self, id: VolumeId) -> Result<(u64, u64, u64)> {
        let root = self.vol_root(id)?;
        let (mut excl, mut shared) = (0u64, 0u64);
        self.usage_walk(root, false, &mut excl, &mut shared)?;
        Ok((excl + shared, excl, shared))
    }

    fn usage_walk(
        &mut self,
        r: BlockRef,
        shared: bool,
        excl: &mut u64,
        sh: &mut u64,
    ) -> Result<()> {
        let shared = shared || self.tm.meta_count(r.block)? > 1;
        let blk = self.tm.read_node(r, MAPPING)?;
        let n = Node(&blk);
        if n.is_leaf() {
            for i in 0..n.nr() {
                let (pb, _) = super::trees::unpack_mapping(u64::from_le_bytes(
                    n.value(i).try_into().unwrap(),
                ));
                if shared || self.tm.data_count(DataBlock(pb.0))? > 1 {
                    *sh += 1;
                } else {
                    *excl += 1;
                }
            }
            return Ok(());
        }
        for i in 0..n.nr() {
            self.usage_walk(n.child(i), shared, excl, sh)?;
        }
        Ok(())
    }

    fn info_of(
        &mut self,
        id: VolumeId,
        d: Details,
        names: &[(VolumeId, Details)],
    ) -> Result<VolumeInfo> {
        let (mapped, excl, shared) = self.usage(id)?;
        debug_assert_eq!(mapped, d.mapped);
        let origin = names
            .iter()
            .find(|(i, _)| Some(*i) == d.origin)
            .map(|(_, o)| o.name.clone());
        Ok(VolumeInfo {
            id,
            name: d.name,
            size: d.size,
            mapped_blocks: mapped,
            exclusive_blocks: excl,
            shared_blocks: shared,
            origin,
            read_only: d.read_only,
            created: d.created,
        })
    }

    /// Every volume with its usage.
    pub fn list(&mut self) -> Result<Vec<VolumeInfo>> {
        let vols = self.volumes()?;
        let mut out = Vec::with_capacity(vols.len());
        for (id, d) in vols.clone() {
            out.push(self.info_of(id, d, &vols)?);
        }
        Ok(out)
    }

    /// One volume with its usage.
    pub fn volume_info(&mut self, name: &str) -> Result<VolumeInfo> {
        let vols = self.volumes()?;
        let (id, d) = vols
            .iter()
            .find(|(_, d)| d.name == name)
            .cloned()
            .ok_or_else(|| PoolError::NoSuchVolume(name.to_string()))?;
        self.info_of(id, d, &vols)
    }
}

/// Volume sizes are bounded so that every block number fits in a key.
pub(crate) fn check_size_fits(size: u64, bs: u64) -> Result<()> {
    if size > (1u64 << 63) || size.div_ceil(bs) >= 1 << 48 {
        return Err(PoolError::InvalidSize(format!(
            "volume size {size} is too large"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::io::{BlockDev, MemDev};
    use crate::pool::{CreateOptions, Pool, PoolError};
    use std::sync::Arc;

    /// A 16 MiB pool of 4 KiB blocks in memory.
    fn mem_pool() -> Pool {
        let meta: Arc<dyn BlockDev> = Arc::new(MemDev::new(16 << 20).unwrap());
        let data: Arc<dyn BlockDev> = Arc::new(MemDev::new(16 << 20).unwrap());
        let mut o = CreateOptions::new(16 << 20);
        o.block_size = 4096;
        Pool::create_on(meta, data, &o).unwrap()
    }

    /// A name that an older version let in (here written straight into the details) still
    /// resolves, and `rename` can replace it; only new names are checked.
    #[test]
    fn legacy_bad_names_can_be_renamed_and_removed() {
        let mut p = mem_pool();
        for (name, legacy) in [("a", "a\nb"), ("c", "c\u{202e}d")] {
            let id = p.create_volume(name, 1 << 20, false).unwrap();
            let mut d = p.details(id).unwrap();
            d.name = legacy.into();
            p.put_details(id, &d).unwrap();
        }
        assert!(matches!(
            p.rename("a\nb", "x\ny"),
            Err(PoolError::InvalidName { .. })
        ));
        p.rename("a\nb", "fixed").unwrap();
        p.remove_volume("c\u{202e}d").unwrap();
        let names: Vec<String> = p.list().unwrap().into_iter().map(|v| v.name).collect();
        assert_eq!(names, ["fixed"]);
    }

    /// The data path's memo of a volume's details and root (`resolve`, `vol_root`) follows
    /// every change of them made between two I/Os on the same volume: a snapshot (the
    /// origin's snapshot time: without it the next write would land in place, inside the
    /// snapshot), read-only, resize, rollback, removal and an aborted transaction.
    #[test]
    fn data_path_memo_follows_volume_changes() {
        let mut p = mem_pool();
        let v = p.create_volume("v", 1 << 20, false).unwrap();
        let mut buf = [0u8; 4096];
        p.write(v, 0, &[1u8; 4096]).unwrap();
        p.read(v, 0, &mut buf).unwrap();
        let s = p.snapshot("v", "s", false).unwrap();
        p.write(v, 0, &[2u8; 4096]).unwrap();
        p.read(s, 0, &mut buf).unwrap();
        assert_eq!(buf, [1u8; 4096], "the snapshot kept its data");
        p.read(v, 0, &mut buf).unwrap();
        assert_eq!(buf, [2u8; 4096]);

        p.set_read_only("v", true).unwrap();
        assert!(matches!(
            p.write(v, 0, &[3u8; 4096]),
            Err(PoolError::ReadOnlyVolume(_))
        ));
        p.set_read_only("v", false).unwrap();
        p.write(v, 0, &[3u8; 4096]).unwrap();

        assert!(p.read(v, 1 << 20, &mut buf).is_err());
        p.resize("v", 2 << 20).unwrap();
        p.read(v, 1 << 20, &mut buf).unwrap();
        assert_eq!(buf, [0u8; 4096]);

        p.rollback("v", "s").unwrap();
        p.read(v, 0, &mut buf).unwrap();
        assert_eq!(buf, [1u8; 4096], "rollback gave v the snapshot's blocks");

        p.remove_volume("s").unwrap();
        assert!(matches!(
            p.read(s, 0, &mut buf),
            Err(PoolError::NoSuchVolume(_))
        ));

        p.commit().unwrap();
        p.write(v, 8192, &[4u8; 4096]).unwrap();
        p.read(v, 8192, &mut buf).unwrap();
        assert_eq!(buf, [4u8; 4096]);
        p.abort();
        p.read(v, 8192, &mut buf).unwrap();
        assert_eq!(buf, [0u8; 4096], "an aborted write is gone");
    }
}
