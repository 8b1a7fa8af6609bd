//! Checking one tree node by node: each node's checksum, own block number and pool UUID
//! (read directly, no cache), generation, tree kind, shape, key order and range, and leaf
//! depth; shared subtrees are checked once and a tree that loops is caught.

use super::Checker;
use crate::meta::block::{self, BlockType};
use crate::meta::btree::{Node, TreeKind};
use crate::meta::journal::BlockRef;
use crate::meta::{MetaBlock, MetaError, BLOCK_SIZE};
use crate::pool::trees::{kind_by_id, MAPPING};

/// `Checker::memo` value of a node whose subtree is being visited.
const IN_PROGRESS: u64 = u64::MAX;

impl Checker<'_> {
    pub(super) fn read(&self, b: MetaBlock, ty: BlockType) -> Result<Vec<u8>, MetaError> {
        if b.0 >= self.rec.meta_blocks {
            return Err(MetaError::corrupt(b, "pointer beyond the metadata device"));
        }
        let mut buf = vec![0u8; BLOCK_SIZE];
        self.dev
            .read_at(&mut buf, b.0 * BLOCK_SIZE as u64)
            .map_err(|e| MetaError::io("read", b, e))?;
        block::verify(&buf, Some(ty), b, &self.label.uuid)?;
        self.progress.inc(1);
        Ok(buf)
    }

    /// Check a whole tree; returns its number of entries. The root gets one reference.
    pub(super) fn tree(
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
}
