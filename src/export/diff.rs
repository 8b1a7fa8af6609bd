//! The changed ranges between two volumes, found by walking their mapping trees side by side
//! (like `thin_delta`).
//!
//! Each tree is read as a stream of items in key order, where an item is either a subtree not
//! yet opened (a node pointer with its height above the leaves) or one mapping. When both
//! streams start with the same node (same block *and* generation: a COW B-tree never changes a
//! written node, so the contents are identical) both skip it unopened. Otherwise the taller
//! subtree is opened (both, at equal heights), and mappings are merged by key: the same data
//! block on both sides means unchanged. Only nodes on paths to a change are read, so the cost
//! follows the size of the change, not the size of the volumes.
//!
//! Correctness does not depend on the trees having the same shape: a subtree's keys always
//! lie between its parent's separating keys, so the merge stays in key order whatever is
//! opened; sharing only makes it cheaper.

use super::Result;
use crate::meta::btree::{Btree, Node};
use crate::meta::journal::BlockRef;
use crate::pool::trees::{unpack_mapping, MAPPING};
use crate::pool::{Pool, VolumeId};

/// How a range differs between FROM and TO.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiffKind {
    /// Mapped in both, to different data.
    Changed,
    /// Mapped only in FROM (TO reads zeros there).
    OnlyInFrom,
    /// Mapped only in TO.
    OnlyInTo,
}

impl DiffKind {
    /// The name `thinpool diff` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            DiffKind::Changed => "changed",
            DiffKind::OnlyInFrom => "only-in-from",
            DiffKind::OnlyInTo => "only-in-to",
        }
    }
}

/// A byte range of the volumes and how it differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiffRange {
    pub offset: u64,
    pub length: u64,
    pub kind: DiffKind,
}

/// What the walk cost and found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiffStats {
    /// Tree nodes read (both trees).
    pub nodes_read: u64,
    /// Subtrees skipped because both trees share them.
    pub subtrees_shared: u64,
    /// Mappings compared one by one.
    pub mappings_compared: u64,
    pub changed_blocks: u64,
    pub only_in_from_blocks: u64,
    pub only_in_to_blocks: u64,
}

/// One differing block: virtual block, kind, and the data block that TO maps (if any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockDiff {
    pub vb: u64,
    pub kind: DiffKind,
    pub to_block: Option<u64>,
}

#[derive(Clone, Copy)]
enum Item {
    Subtree { node: BlockRef, height: u32 },
    Mapping { vb: u64, pb: u64 },
}

/// A tree read lazily in key order: items on a stack, the front at the end. Only keys in
/// `[lo, hi)` are wanted: subtrees wholly outside are never pushed, mappings outside dropped.
struct Cursor {
    stack: Vec<Item>,
    lo: u64,
    hi: u64,
}

impl Cursor {
    fn new(
        pool: &mut Pool,
        root: BlockRef,
        (lo, hi): (u64, u64),
        stats: &mut DiffStats,
    ) -> Result<Cursor> {
        let height = tree_height(pool, root, stats)?;
        Ok(Cursor {
            stack: vec![Item::Subtree { node: root, height }],
            lo,
            hi,
        })
    }

    fn front(&self) -> Option<Item> {
        self.stack.last().copied()
    }

    /// Replace the front subtree by its children (or its mappings).
    fn open(&mut self, pool: &mut Pool, stats: &mut DiffStats) -> Result<()> {
        let Some(Item::Subtree { node, height }) = self.stack.pop() else {
            unreachable!("open is only called on a subtree");
        };
        let blk = pool.tm.read_node(node, MAPPING)?;
        stats.nodes_read += 1;
        let n = Node(&blk);
        if n.is_leaf() {
            for i in (0..n.nr()).rev() {
                if !(self.lo..self.hi).contains(&n.key(i)) {
                    continue;
                }
                let v = u64::from_le_bytes(n.value(i).try_into().expect("8-byte mapping"));
                let (pb, _) = unpack_mapping(v);
                self.stack.push(Item::Mapping {
                    vb: n.key(i),
                    pb: pb.0,
                });
            }
        } else {
            for i in (0..n.nr()).rev() {
                // Child i holds keys from key(i) up to key(i + 1).
                let below = i + 1 < n.nr() && n.key(i + 1) <= self.lo;
                if below || n.key(i) >= self.hi {
                    continue;
                }
                self.stack.push(Item::Subtree {
                    node: n.child(i),
                    height: height.saturating_sub(1),
                });
            }
        }
        Ok(())
    }
}

/// Levels above the leaves (a leaf root is 0); every leaf of a B-tree is at the same depth.
fn tree_height(pool: &mut Pool, root: BlockRef, stats: &mut DiffStats) -> Result<u32> {
    let mut r = root;
    let mut h = 0;
    loop {
        let blk = pool.tm.read_node(r, MAPPING)?;
        stats.nodes_read += 1;
        let n = Node(&blk);
        if n.is_leaf() || n.nr() == 0 {
            return Ok(h);
        }
        r = n.child(0);
        h += 1;
    }
}

/// Every block that differs between volumes `from` and `to`, in block order, through `f`.
pub fn diff_blocks(
    pool: &mut Pool,
    from: VolumeId,
    to: VolumeId,
    f: &mut dyn FnMut(BlockDiff) -> Result<()>,
) -> Result<DiffStats> {
    diff_blocks_in(pool, from, to, 0..u64::MAX, &mut |d| f(d).map(|()| true))
}

/// [`diff_blocks`] for the virtual blocks in `range` only: subtrees wholly outside it are
/// not read, so the cost follows the change inside the range. The walk stops early when
/// `f` returns `false`.
pub fn diff_blocks_in(
    pool: &mut Pool,
    from: VolumeId,
    to: VolumeId,
    range: std::ops::Range<u64>,
    f: &mut dyn FnMut(BlockDiff) -> Result<bool>,
) -> Result<DiffStats> {
    let mut stats = DiffStats::default();
    let (ra, rb) = (pool.vol_root(from)?, pool.vol_root(to)?);
    if range.is_empty() {
        return Ok(stats);
    }
    if ra == rb {
        stats.subtrees_shared = 1;
        return Ok(stats);
    }
    let bounds = (range.start, range.end);
    let mut a = Cursor::new(pool, ra, bounds, &mut stats)?;
    let mut b = Cursor::new(pool, rb, bounds, &mut stats)?;
    let mut emit = |stats: &mut DiffStats, d: BlockDiff| {
        match d.kind {
            DiffKind::Changed => stats.changed_blocks += 1,
            DiffKind::OnlyInFrom => stats.only_in_from_blocks += 1,
            DiffKind::OnlyInTo => stats.only_in_to_blocks += 1,
        }
        f(d)
    };
    loop {
        match (a.front(), b.front()) {
            (None, None) => break,
            (Some(Item::Subtree { node: x, .. }), Some(Item::Subtree { node: y, .. }))
                if x == y =>
            {
                stats.subtrees_shared += 1;
                a.stack.pop();
                b.stack.pop();
            }
            (Some(Item::Subtree { height: ha, .. }), Some(Item::Subtree { height: hb, .. })) => {
                // Open the taller one: its children may be the other side's node.
                if ha >= hb {
                    a.open(pool, &mut stats)?;
                }
                if hb >= ha {
                    b.open(pool, &mut stats)?;
                }
            }
            (Some(Item::Subtree { .. }), _) => a.open(pool, &mut stats)?,
            (_, Some(Item::Subtree { .. })) => b.open(pool, &mut stats)?,
            (Some(Item::Mapping { vb, .. }), None) => {
                a.stack.pop();
                if !emit(
                    &mut stats,
                    BlockDiff {
                        vb,
                        kind: DiffKind::OnlyInFrom,
                        to_block: None,
                    },
                )? {
                    break;
                }
            }
            (None, Some(Item::Mapping { vb, pb })) => {
                b.stack.pop();
                if !emit(
                    &mut stats,
                    BlockDiff {
                        vb,
                        kind: DiffKind::OnlyInTo,
                        to_block: Some(pb),
                    },
                )? {
                    break;
                }
            }
            (Some(Item::Mapping { vb: ka, pb: pa }), Some(Item::Mapping { vb: kb, pb: pbb })) => {
                stats.mappings_compared += 1;
                if ka < kb {
                    a.stack.pop();
                    if !emit(
                        &mut stats,
                        BlockDiff {
                            vb: ka,
                            kind: DiffKind::OnlyInFrom,
                            to_block: None,
                        },
                    )? {
                        break;
                    }
                } else if kb < ka {
                    b.stack.pop();
                    if !emit(
                        &mut stats,
                        BlockDiff {
                            vb: kb,
                            kind: DiffKind::OnlyInTo,
                            to_block: Some(pbb),
                        },
                    )? {
                        break;
                    }
                } else {
                    a.stack.pop();
                    b.stack.pop();
                    let changed = BlockDiff {
                        vb: ka,
                        kind: DiffKind::Changed,
                        to_block: Some(pbb),
                    };
                    if pa != pbb && !emit(&mut stats, changed)? {
                        break;
                    }
                }
            }
        }
    }
    Ok(stats)
}

/// The differing byte ranges between volumes `from` and `to`, coalesced (adjacent blocks of
/// the same kind form one range), clipped to the larger volume's size.
pub fn diff_volumes(
    pool: &mut Pool,
    from: VolumeId,
    to: VolumeId,
) -> Result<(Vec<DiffRange>, DiffStats)> {
    diff_volumes_with_progress(pool, from, to, &crate::progress::NoProgress)
}

/// [`diff_volumes`], reporting on `progress` how far into the volumes (bytes) the walk is.
pub fn diff_volumes_with_progress(
    pool: &mut Pool,
    from: VolumeId,
    to: VolumeId,
    progress: &dyn crate::progress::Progress,
) -> Result<(Vec<DiffRange>, DiffStats)> {
    let bs = pool.block_size();
    let end = pool.details(from)?.size.max(pool.details(to)?.size);
    progress.set_total(end);
    let mut done = 0;
    let mut out: Vec<DiffRange> = Vec::new();
    let stats = diff_blocks(pool, from, to, &mut |d| {
        let off = d.vb * bs;
        if off >= end {
            return Ok(());
        }
        let reached = (off + bs).min(end);
        progress.inc(reached.saturating_sub(done));
        done = done.max(reached);
        let len = bs.min(end - off);
        match out.last_mut() {
            Some(r) if r.kind == d.kind && r.offset + r.length == off => r.length += len,
            _ => out.push(DiffRange {
                offset: off,
                length: len,
                kind: d.kind,
            }),
        }
        Ok(())
    })?;
    progress.inc(end.saturating_sub(done));
    Ok((out, stats))
}
