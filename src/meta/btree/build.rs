//! Building a tree bottom-up from entries in ascending key order, every node packed full, as
//! thin-provisioning-tools' restore does: each node is written once, when it is full, and
//! nothing is read back, so building `n` entries costs O(n) and `n / capacity` node writes
//! instead of `n` root-to-leaf inserts.

use super::mutate::new_node;
use super::node::{insert_entry, Node};
use super::{Btree, NodeStore, TreeKind};
use crate::meta::journal::{encode_ref, BlockRef};
use crate::meta::Result;

/// A node being filled on one level of the tree.
struct Open {
    r: BlockRef,
    buf: Vec<u8>,
    /// Its first key (the key its parent records for it).
    first: u64,
}

/// A tree under construction. Push entries in strictly ascending key order (the caller
/// validates its input; out-of-order keys would make a tree lookups cannot search), then
/// [`TreeBuilder::finish`] returns the root. Each value takes its references as an insert
/// would (a data block, a subtree root). Every node is new in this transaction, so later
/// edits in the same transaction change it in place.
pub struct TreeBuilder {
    kind: TreeKind,
    /// `levels[0]` is the leaf being filled, `levels[i]` the internal node above it at
    /// height `i`; `None` once a level has no open node.
    levels: Vec<Option<Open>>,
    last: Option<u64>,
}

impl TreeBuilder {
    pub fn new(kind: TreeKind) -> TreeBuilder {
        TreeBuilder {
            kind,
            levels: Vec::new(),
            last: None,
        }
    }

    /// Append one entry (its key above every key pushed before).
    pub fn push<S: NodeStore + ?Sized>(&mut self, s: &mut S, key: u64, value: &[u8]) -> Result<()> {
        debug_assert!(self.last.is_none_or(|l| key > l), "keys must ascend");
        debug_assert_eq!(value.len(), self.kind.value_size);
        self.last = Some(key);
        s.inc_value(self.kind, value)?;
        self.add(s, 0, key, value)
    }

    /// Add an entry to the open node of `level`, first writing that node out (and adding it
    /// to its parent) when it is full.
    fn add<S: NodeStore + ?Sized>(
        &mut self,
        s: &mut S,
        level: usize,
        key: u64,
        value: &[u8],
    ) -> Result<()> {
        if self.levels.len() == level {
            self.levels.push(None);
        }
        let full = self.levels[level]
            .as_ref()
            .is_some_and(|o| Node(&o.buf).nr() == Node(&o.buf).max());
        if full {
            let done = self.levels[level].take().expect("checked above");
            self.close(s, level, done)?;
        }
        if self.levels[level].is_none() {
            let (r, buf) = new_node(s, self.kind, level == 0)?;
            s.note_shadowed(r.block);
            self.levels[level] = Some(Open { r, buf, first: key });
        }
        let o = self.levels[level].as_mut().expect("opened above");
        let at = Node(&o.buf).nr();
        insert_entry(&mut o.buf, at, key, value);
        Ok(())
    }

    /// Write a finished node and record it in its parent.
    fn close<S: NodeStore + ?Sized>(&mut self, s: &mut S, level: usize, o: Open) -> Result<()> {
        s.put_block(o.r.block, o.buf)?;
        self.add(s, level + 1, o.first, &encode_ref(o.r))
    }

    /// Write out every open node and return the root: an empty leaf when nothing was pushed.
    pub fn finish<S: NodeStore + ?Sized>(mut self, s: &mut S) -> Result<BlockRef> {
        if self.levels.is_empty() {
            return s.btree_empty(self.kind);
        }
        let mut level = 0;
        loop {
            let o = self.levels[level]
                .take()
                .expect("a level's node is open until here");
            if level + 1 == self.levels.len() {
                // The top level: its only node is the root (it has at least two children
                // when it is internal, since a level above the leaves starts only when the
                // level below fills its first node and opens a second).
                s.put_block(o.r.block, o.buf)?;
                return Ok(o.r);
            }
            self.close(s, level, o)?;
            level += 1;
        }
    }
}
