//! The checker (`thinpool check`, like `thin_check`): verifies every reachable metadata block
//! of the chosen record and recomputes every reference count.
//!
//! What it checks: every journal slot (valid or not, which record is chosen, gaps and
//! conflicting duplicates); every reachable node's checksum, own block number, pool UUID,
//! generation (equal to what its parent recorded and not newer than the record), tree kind,
//! fill, key order and key range, and leaf depth; every mapping inside the pool and inside its
//! volume; per-volume mapped counts against the details tree; every space-map page and its
//! free count; and the recomputed reference count of every metadata and data block against
//! the space maps (more on disk than computed is a leak, fewer is fatal).
//!
//! It reads blocks directly (no cache, each reachable node once) and visits the children of
//! an internal node in block order, so a freshly written tree is read front to back.

mod report;

pub use report::{Finding, Report, Severity};

use crate::io::BlockDev;
use crate::meta::block::{self, BlockType};
use crate::meta::btree::{Node, TreeKind};
use crate::meta::journal::decode_ref;
use crate::meta::journal::{BlockRef, Record, RootId};
use crate::meta::label::Label;
use crate::meta::spacemap::{self, ENTRIES_PER_PAGE};
use crate::meta::spacemap::{SM_INDEX, SM_OVERFLOW};
use crate::meta::txn::Tm;
use crate::meta::{MetaBlock, MetaError, BLOCK_SIZE};
use crate::pool::details::{Details, DETAILS};
use crate::pool::trees::{kind_by_id, unpack_mapping, DEV_ROOTS, MAPPING};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Check a pool's metadata alone. `at_seq` checks an older record instead of the newest
/// usable one.
pub fn check(meta: Arc<dyn BlockDev>, at_seq: Option<u64>) -> Report {
    check_inner(meta, None, at_seq)
}

/// Check a pool's metadata and the length of its data device: a mapped block whose end lies
/// past `data_len` is an error (the data file was truncated or replaced; it would read as
/// zeros).
pub fn check_with_data(meta: Arc<dyn BlockDev>, data_len: u64, at_seq: Option<u64>) -> Report {
    check_inner(meta, Some(data_len), at_seq)
}

fn check_inner(meta: Arc<dyn BlockDev>, data_len: Option<u64>, at_seq: Option<u64>) -> Report {
    let mut rep = Report::default();
    let (tm, open) = match Tm::open_at(meta.clone(), 256, true, at_seq) {
        Ok(x) => x,
        Err(e) => {
            rep.error("journal", None, "", format!("cannot open the pool: {e}"));
            damaged_roots(&mut rep, meta);
            return rep;
        }
    };
    report::journal_findings(&mut rep, &open);
    let rec = tm.last_record().clone();
    let label = tm.label().clone();
    drop(tm);
    let mut c = Checker {
        dev: meta,
        label,
        rec: rec.clone(),
        meta_refs: vec![0u32; rec.meta_blocks as usize],
        data_refs: vec![0u8; rec.data_blocks as usize],
        data_big: HashMap::new(),
        data_len,
        memo: HashMap::new(),
        rep,
    };
    c.run();
    c.rep
}

/// When no record opens: say which root block of each valid record is damaged.
fn damaged_roots(rep: &mut Report, meta: Arc<dyn BlockDev>) {
    let mut lbuf = vec![0u8; BLOCK_SIZE];
    if meta.read_at(&mut lbuf, 0).is_err() {
        return;
    }
    let Ok(label) = Label::decode(&lbuf) else {
        return;
    };
    let Ok(slots) = crate::meta::journal::scan(meta.as_ref(), &label.uuid, label.ring_slots) else {
        return;
    };
    let mut bm = crate::meta::cache::BlockManager::new(meta, label.uuid, label.meta_blocks, 64);
    let mut seen = std::collections::HashSet::new();
    for s in &slots {
        if let Ok(rec) = &s.result {
            if let Err((b, msg)) = crate::meta::txn::verify_record_roots(&mut bm, rec) {
                if seen.insert((b, msg.clone())) {
                    rep.error("node", Some(b), &format!("root of seq {}", rec.seq), msg);
                }
            }
        }
    }
}

/// `Checker::memo` value of a node whose subtree is being visited.
const IN_PROGRESS: u64 = u64::MAX;

struct Checker {
    dev: Arc<dyn BlockDev>,
    label: Label,
    rec: Record,
    meta_refs: Vec<u32>,
    data_refs: Vec<u8>,
    data_big: HashMap<u64, u64>,
    /// Length of the data device, when it is checked too.
    data_len: Option<u64>,
    /// Entries below each visited node (for per-volume mapped counts of shared subtrees).
    memo: HashMap<u64, u64>,
    rep: Report,
}

/// Everything collected from the leaves of the trees that describe the pool itself.
#[derive(Default)]
struct Collected {
    details: BTreeMap<u64, Details>,
    dev_roots: BTreeMap<u64, BlockRef>,
    pages: BTreeMap<u64, BlockRef>,
    overflow: BTreeMap<u64, u64>,
}

impl Checker {
    fn run(&mut self) {
        for b in 0..self.label.first_free_block().min(self.rec.meta_blocks) {
            self.meta_refs[b as usize] += 1;
        }
        let rec = self.rec.clone();
        let r = |id| rec.root(id).r;
        let (details_root, top_root) = (r(RootId::User0), r(RootId::User1));
        let details_kind = DETAILS;

        let mut coll = Collected::default();
        self.tree(
            details_root,
            details_kind,
            "details tree",
            &mut |c, k, v| {
                coll.details.insert(k, Details::decode(v));
                let _ = c;
            },
        );
        self.tree(
            top_root,
            DEV_ROOTS,
            "top-level mapping tree",
            &mut |_, k, v| {
                coll.dev_roots.insert(k, decode_ref(v));
            },
        );
        // Volumes: each subtree root gets one reference per volume that points at it.
        let bs = self.label.data_block_size;
        for (id, root) in coll.dev_roots.clone() {
            let name = coll
                .details
                .get(&id)
                .map(|d| d.name.clone())
                .unwrap_or_default();
            let loc = format!("volume {id} '{name}'");
            let size_blocks = coll
                .details
                .get(&id)
                .map(|d| d.size.div_ceil(bs))
                .unwrap_or(u64::MAX);
            let data_blocks = self.rec.data_blocks;
            let mut beyond = 0u64;
            let entries = self.tree(root, MAPPING, &loc, &mut |c, vb, v| {
                let (pb, _) = unpack_mapping(u64::from_le_bytes(v.try_into().unwrap()));
                if pb.0 >= data_blocks {
                    c.rep.error("mapping", None, &loc, format!("virtual block {vb} maps to data block {} beyond the pool ({data_blocks} blocks)", pb.0));
                } else {
                    c.add_data_ref(pb.0);
                }
                if vb >= size_blocks {
                    beyond += 1;
                }
            });
            if beyond > 0 {
                self.rep.error(
                    "mapping",
                    None,
                    &loc,
                    format!("{beyond} mappings lie beyond the volume's size"),
                );
            }
            match coll.details.get(&id) {
                None => self.rep.error(
                    "details",
                    None,
                    &loc,
                    "volume has a mapping tree but no details entry",
                ),
                Some(d) if d.mapped != entries => self.rep.error(
                    "details",
                    None,
                    &loc,
                    format!(
                        "details say {} mapped blocks, the tree holds {entries}",
                        d.mapped
                    ),
                ),
                _ => {}
            }
        }
        self.data_past_end(bs);
        for (id, d) in &coll.details {
            if !coll.dev_roots.contains_key(id) {
                self.rep.error(
                    "details",
                    None,
                    &format!("volume {id} '{}'", d.name),
                    "details entry without a mapping tree",
                );
            }
        }
        self.rep.stats.volumes = coll.details.len() as u64;

        // Space maps: their trees and pages are metadata too, so every tree is walked
        // before any count is compared.
        let mut sms = Vec::new();
        for (name, idx, ovf, nr, allocated) in [
            (
                "data",
                RootId::DataIndex,
                RootId::DataOverflow,
                self.rec.data_blocks,
                self.rec.data_allocated,
            ),
            (
                "metadata",
                RootId::MetaIndex,
                RootId::MetaOverflow,
                self.rec.meta_blocks,
                self.rec.meta_allocated,
            ),
        ] {
            let mut c2 = Collected::default();
            let loc = format!("{name} space map");
            self.tree(r(idx), SM_INDEX, &format!("{loc} index"), &mut |_, k, v| {
                c2.pages.insert(k, decode_ref(v));
            });
            self.tree(
                r(ovf),
                SM_OVERFLOW,
                &format!("{loc} overflow tree"),
                &mut |_, k, v| {
                    c2.overflow
                        .insert(k, u64::from_le_bytes(v.try_into().unwrap()));
                },
            );
            for p in c2.pages.values() {
                self.add_meta_ref(p.block);
            }
            sms.push((name == "metadata", nr, allocated, c2, loc));
        }
        for (is_meta, nr, allocated, c2, loc) in sms {
            self.compare_space_map(is_meta, nr, allocated, &c2, &loc);
        }
        // The previous state's space maps must still be intact (allocation protection):
        // the allocator reads their index and pages before it hands out a block, so damage
        // there makes every allocation of that space map fail.
        for id in [RootId::PrevDataIndex, RootId::PrevMetaIndex] {
            let root = self.rec.root(id);
            if root.r.block.0 == 0 {
                continue;
            }
            let mut seen = std::collections::HashSet::new();
            if let Err((b, msg)) = self.prev_index(root.r, 0, &mut seen) {
                self.rep.error(
                    "journal",
                    Some(b),
                    "",
                    format!(
                        "{id:?}: the previous commit's space map is damaged ({msg}); \
                         allocations read it, so writes fail"
                    ),
                );
            }
        }
    }

    /// Read a previous state's space-map index and the bitmap pages it names (reachable
    /// blocks only verified, not counted: that state holds no references of its own).
    fn prev_index(
        &self,
        r: BlockRef,
        depth: u32,
        seen: &mut std::collections::HashSet<u64>,
    ) -> Result<(), (MetaBlock, String)> {
        if depth > 64 || !seen.insert(r.block.0) {
            return Err((r.block, "the index tree loops".into()));
        }
        let raw = self
            .read(r.block, BlockType::Node)
            .map_err(|e| (r.block, e.to_string()))?;
        if block::generation(&raw) != r.gen {
            return Err((r.block, "a node has another generation".into()));
        }
        let n = Node(&raw);
        n.validate_shape().map_err(|e| (r.block, e))?;
        if n.value_size() != 16 {
            return Err((r.block, "not a space-map index node".into()));
        }
        for i in 0..n.nr() {
            let c = n.child(i);
            if !n.is_leaf() {
                self.prev_index(c, depth + 1, seen)?;
                continue;
            }
            let page = self
                .read(c.block, BlockType::Bitmap)
                .map_err(|e| (c.block, e.to_string()))?;
            if block::generation(&page) != c.gen {
                return Err((c.block, "a bitmap page has another generation".into()));
            }
        }
        Ok(())
    }

    fn add_meta_ref(&mut self, b: MetaBlock) {
        if let Some(x) = self.meta_refs.get_mut(b.0 as usize) {
            *x += 1;
        }
    }

    /// Mapped data blocks whose end lies past the end of the data device.
    fn data_past_end(&mut self, bs: u64) {
        let Some(len) = self.data_len else { return };
        let first = len / bs;
        let past: Vec<u64> = (first..self.data_refs.len() as u64)
            .filter(|&b| self.data_refs[b as usize] != 0)
            .collect();
        if let (Some(lo), Some(hi)) = (past.first(), past.last()) {
            self.rep.error(
                "data",
                None,
                "data file",
                format!(
                    "{} mapped blocks lie past the end of the data file ({len} bytes): data \
                     blocks {lo} to {hi} would read as zeros; the data file was truncated or \
                     replaced",
                    past.len()
                ),
            );
        }
    }

    fn add_data_ref(&mut self, b: u64) {
        let x = &mut self.data_refs[b as usize];
        if *x == u8::MAX {
            *self.data_big.entry(b).or_insert(u8::MAX as u64) += 1;
        } else {
            *x += 1;
        }
    }

    fn data_ref(&self, b: u64) -> u64 {
        let x = self.data_refs[b as usize];
        if x == u8::MAX {
            self.data_big.get(&b).copied().unwrap_or(x as u64)
        } else {
            x as u64
        }
    }

    fn read(&self, b: MetaBlock, ty: BlockType) -> Result<Vec<u8>, MetaError> {
        if b.0 >= self.rec.meta_blocks {
            return Err(MetaError::corrupt(b, "pointer beyond the metadata device"));
        }
        let mut buf = vec![0u8; BLOCK_SIZE];
        self.dev
            .read_at(&mut buf, b.0 * BLOCK_SIZE as u64)
            .map_err(|e| MetaError::io("read", b, e))?;
        block::verify(&buf, Some(ty), b, &self.label.uuid)?;
        Ok(buf)
    }

    /// Check a whole tree; returns its number of entries. The root gets one reference.
    fn tree(
        &mut self,
        root: BlockRef,
        kind: TreeKind,
        loc: &str,
        f: &mut dyn FnMut(&mut Self, u64, &[u8]),
    ) -> u64 {
        let mut leaf_depth = None;
        self.node(root, kind, loc, 0, u64::MAX, true, 0, &mut leaf_depth, f)
    }

    #[allow(clippy::too_many_arguments)]
    fn node(
        &mut self,
        r: BlockRef,
        kind: TreeKind,
        loc: &str,
        lo: u64,
        hi: u64,
        is_root: bool,
        depth: u32,
        leaf_depth: &mut Option<u32>,
        f: &mut dyn FnMut(&mut Self, u64, &[u8]),
    ) -> u64 {
        self.add_meta_ref(r.block);
        match self.memo.get(&r.block.0) {
            Some(&IN_PROGRESS) => {
                // A node below itself: its tree loops (a damaged or forged pointer).
                self.rep.error(
                    "node",
                    Some(r.block),
                    loc,
                    "a child pointer leads back to this node: the tree loops",
                );
                return 0;
            }
            Some(&n) => return n, // shared node: checked on its first visit
            None => {}
        }
        self.memo.insert(r.block.0, IN_PROGRESS);
        let at = format!(
            "{loc}, keys {lo}..{}",
            if hi == u64::MAX {
                "end".to_string()
            } else {
                hi.to_string()
            }
        );
        let raw = match self.read(r.block, BlockType::Node) {
            Ok(raw) => raw,
            Err(e) => {
                self.rep.error("node", Some(r.block), &at, e.to_string());
                self.memo.insert(r.block.0, 0);
                return 0;
            }
        };
        self.rep.stats.nodes += 1;
        let n = Node(&raw);
        let gen = block::generation(&raw);
        let bad = |c: &mut Self, msg: String| c.rep.error("node", Some(r.block), &at, msg);
        if gen != r.gen {
            bad(
                self,
                format!("generation {gen}, but its parent recorded {}", r.gen),
            );
        }
        if gen > self.rec.seq {
            bad(
                self,
                format!(
                    "generation {gen} is newer than the record (seq {})",
                    self.rec.seq
                ),
            );
        }
        if n.kind_id() != kind.id {
            let found = kind_by_id(n.kind_id())
                .map(|k| k.to_string())
                .unwrap_or_else(|| n.kind_id().to_string());
            bad(
                self,
                format!(
                    "node of tree kind {found} where kind {} was expected",
                    kind.id
                ),
            );
            self.memo.insert(r.block.0, 0);
            return 0;
        }
        if let Err(e) = n.validate_shape() {
            bad(self, e);
            self.memo.insert(r.block.0, 0);
            return 0;
        }
        let want_vs = if n.is_leaf() { kind.value_size } else { 16 };
        if n.value_size() != want_vs {
            bad(
                self,
                format!("value size {} should be {want_vs}", n.value_size()),
            );
            self.memo.insert(r.block.0, 0);
            return 0;
        }
        if n.nr() == 0 && !is_root {
            bad(self, "empty non-root node".into());
        }
        for i in 0..n.nr() {
            let k = n.key(i);
            if i > 0 && k <= n.key(i - 1) {
                bad(
                    self,
                    format!(
                        "key {k} at index {i} is not above the previous key {}",
                        n.key(i - 1)
                    ),
                );
            }
            if k < lo || k >= hi {
                bad(
                    self,
                    format!("key {k} lies outside the range its parent gives"),
                );
            }
        }
        let mut entries = 0u64;
        if n.is_leaf() {
            match leaf_depth {
                None => *leaf_depth = Some(depth),
                Some(d) if *d != depth => bad(
                    self,
                    format!("leaf at depth {depth}, other leaves at depth {d}"),
                ),
                _ => {}
            }
            for i in 0..n.nr() {
                f(self, n.key(i), n.value(i));
            }
            entries = n.nr() as u64;
            if kind == MAPPING {
                self.rep.stats.mappings += entries;
            }
        } else {
            // Visit children in block order (sequential reads), account in key order.
            let mut order: Vec<usize> = (0..n.nr()).collect();
            order.sort_by_key(|&i| n.child(i).block.0);
            for i in order {
                let clo = n.key(i);
                let chi = if i + 1 < n.nr() { n.key(i + 1) } else { hi };
                entries += self.node(
                    n.child(i),
                    kind,
                    loc,
                    clo,
                    chi,
                    false,
                    depth + 1,
                    leaf_depth,
                    f,
                );
            }
        }
        self.memo.insert(r.block.0, entries);
        entries
    }

    fn compare_space_map(
        &mut self,
        is_meta: bool,
        nr_blocks: u64,
        allocated: u64,
        coll: &Collected,
        loc: &str,
    ) {
        let nr_pages = nr_blocks.div_ceil(ENTRIES_PER_PAGE);
        if coll.pages.len() as u64 != nr_pages
            || coll.pages.keys().enumerate().any(|(i, &k)| i as u64 != k)
        {
            self.rep.error(
                "space map",
                None,
                loc,
                format!(
                    "index holds pages {:?}, expected 0..{nr_pages}",
                    coll.pages.keys().take(8).collect::<Vec<_>>()
                ),
            );
        }
        let mut nonzero = 0u64;
        let (mut leaks, mut under) = (0u64, 0u64);
        for (&pi, &pr) in &coll.pages {
            let page = match self.read(pr.block, BlockType::Bitmap) {
                Ok(p) => p,
                Err(e) => {
                    self.rep
                        .error("space map", Some(pr.block), loc, format!("page {pi}: {e}"));
                    continue;
                }
            };
            if block::generation(&page) != pr.gen {
                self.rep.error(
                    "space map",
                    Some(pr.block),
                    loc,
                    format!(
                        "page {pi}: generation {} but the index recorded {}",
                        block::generation(&page),
                        pr.gen
                    ),
                );
            }
            let base = pi.saturating_mul(ENTRIES_PER_PAGE);
            let n = (nr_blocks.saturating_sub(base)).min(ENTRIES_PER_PAGE) as usize;
            let mut zeros = 0u32;
            for i in 0..n {
                let b = base + i as u64;
                let v = spacemap::page_get(&page, i);
                let stored = if v == 3 {
                    match coll.overflow.get(&b) {
                        Some(&c) if c >= 3 => c,
                        other => {
                            self.rep.error(
                                "space map",
                                Some(pr.block),
                                loc,
                                format!("block {b}: count 3+ but overflow tree has {other:?}"),
                            );
                            3
                        }
                    }
                } else {
                    if coll.overflow.contains_key(&b) {
                        self.rep.error(
                            "space map",
                            Some(pr.block),
                            loc,
                            format!("block {b}: overflow entry for a count below 3"),
                        );
                    }
                    v as u64
                };
                let computed = if is_meta {
                    self.meta_refs[b as usize] as u64
                } else {
                    self.data_ref(b)
                };
                if stored == 0 {
                    zeros += 1;
                } else {
                    nonzero += 1;
                }
                if stored > computed {
                    leaks += 1;
                    if leaks <= 16 {
                        self.rep.error("leak", None, loc, format!("block {b}: space map counts {stored}, found {computed} references (leaked)"));
                    }
                } else if stored < computed {
                    under += 1;
                    if under <= 16 {
                        self.rep.error("refcount", None, loc, format!("block {b}: space map counts {stored}, but {computed} references exist (would be freed while in use)"));
                    }
                }
            }
            if spacemap::page_nr_free(&page) != zeros {
                self.rep.error(
                    "space map",
                    Some(pr.block),
                    loc,
                    format!(
                        "page {pi}: header says {} free, bitmap has {zeros}",
                        spacemap::page_nr_free(&page)
                    ),
                );
            }
        }
        if leaks > 16 || under > 16 {
            self.rep.error(
                "refcount",
                None,
                loc,
                format!("{leaks} leaked and {under} under-counted blocks in all"),
            );
        }
        if nonzero != allocated {
            self.rep.error(
                "space map",
                None,
                loc,
                format!("record says {allocated} blocks allocated, the bitmaps hold {nonzero}"),
            );
        }
        if is_meta {
            self.rep.stats.metadata_blocks_used = nonzero;
        } else {
            self.rep.stats.data_blocks_used = nonzero;
        }
    }
}
