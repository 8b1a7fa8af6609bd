//! The write side of the B-tree: shadowing (copy-on-write of shared nodes), insert with
//! node splits, remove with rebalancing of underfull nodes and collapse of single-child
//! roots, and releasing whole trees (module docs of `btree` for shadowing).

use super::node::{
    init_node, insert_entry, remove_entry, set_entries, set_key, set_nr, set_value, Node,
};
use super::{check_depth, Btree, NodeStore, TreeKind};
use crate::meta::block::{self, BlockType};
use crate::meta::journal::{encode_ref, BlockRef};
use crate::meta::{MetaError, Result, BLOCK_SIZE};

/// A node below `max / UNDERFULL_DIV` entries after a removal is rebalanced with a neighbour.
const UNDERFULL_DIV: usize = 3;

enum Outcome {
    Done(BlockRef),
    Split(BlockRef, u64, BlockRef),
}

pub(crate) fn new_node<S: NodeStore + ?Sized>(
    s: &mut S,
    kind: TreeKind,
    leaf: bool,
) -> Result<(BlockRef, Vec<u8>)> {
    let b = s.alloc_block()?;
    let mut buf = vec![0u8; BLOCK_SIZE];
    block::init_header(&mut buf, BlockType::Node, b, s.generation(), &s.pool_uuid());
    init_node(&mut buf, kind, leaf);
    Ok((
        BlockRef {
            block: b,
            gen: s.generation(),
        },
        buf,
    ))
}

/// [`Btree::btree_insert`].
pub(super) fn insert<S: NodeStore + ?Sized>(
    s: &mut S,
    root: &mut BlockRef,
    kind: TreeKind,
    key: u64,
    value: &[u8],
) -> Result<Option<Vec<u8>>> {
    debug_assert_eq!(value.len(), kind.value_size);
    let mut old = None;
    match insert_rec(s, *root, kind, key, value, 0, &mut old)? {
        Outcome::Done(r) => *root = r,
        Outcome::Split(l, k, r) => {
            let lkey = {
                let blk = s.read_node(l, kind)?;
                Node(&blk).key(0)
            };
            let (nr, mut buf) = new_node(s, kind, false)?;
            insert_entry(&mut buf, 0, lkey, &encode_ref(l));
            insert_entry(&mut buf, 1, k, &encode_ref(r));
            s.put_block(nr.block, buf)?;
            s.note_shadowed(nr.block);
            *root = nr;
        }
    }
    Ok(old)
}

/// [`Btree::btree_remove`].
pub(super) fn remove<S: NodeStore + ?Sized>(
    s: &mut S,
    root: &mut BlockRef,
    kind: TreeKind,
    key: u64,
) -> Result<Option<Vec<u8>>> {
    if s.btree_lookup(*root, kind, key)?.is_none() {
        return Ok(None);
    }
    let mut old = None;
    let new_root = remove_rec(s, *root, kind, key, &mut old)?;
    *root = new_root;
    // Collapse internal roots with a single child (keeps every leaf at the same depth).
    loop {
        let blk = s.read_node(*root, kind)?;
        let n = Node(&blk);
        if n.is_leaf() || n.nr() != 1 {
            break;
        }
        let child = n.child(0);
        // `root` was shadowed by remove_rec: it has one reference, which moves to the child.
        s.ref_delta(root.block, -1);
        *root = child;
    }
    // An internal root that lost all children becomes an empty leaf.
    let empty_internal = {
        let blk = s.read_node(*root, kind)?;
        let n = Node(&blk);
        !n.is_leaf() && n.nr() == 0
    };
    if empty_internal {
        s.ref_delta(root.block, -1);
        *root = s.btree_empty(kind)?;
    }
    Ok(old)
}

/// Shadow a node for writing (see the module docs).
fn shadow_node<S: NodeStore + ?Sized>(s: &mut S, r: BlockRef, kind: TreeKind) -> Result<BlockRef> {
    let count = s.ref_count(r.block)?;
    if count == 1 && s.was_shadowed(r.block) {
        return Ok(r);
    }
    let src = s.read_node(r, kind)?;
    let new = s.alloc_block()?;
    let mut buf = src.to_vec();
    block::set_block_number(&mut buf, new);
    block::set_generation(&mut buf, s.generation());
    s.put_block(new, buf)?;
    s.note_shadowed(new);
    if count > 1 {
        inc_children(s, &src, kind)?;
    }
    // The old block loses this reference; when it was the only one, the children moved
    // to the copy, so nothing below is released.
    s.ref_delta(r.block, -1);
    Ok(BlockRef {
        block: new,
        gen: s.generation(),
    })
}

fn inc_children<S: NodeStore + ?Sized>(s: &mut S, node: &[u8], kind: TreeKind) -> Result<()> {
    let n = Node(node);
    for i in 0..n.nr() {
        if !n.is_leaf() {
            s.ref_delta(n.child(i).block, 1);
            continue;
        }
        s.inc_value(kind, n.value(i))?;
    }
    Ok(())
}

pub(super) fn dec_rec<S: NodeStore + ?Sized>(
    s: &mut S,
    root: BlockRef,
    kind: TreeKind,
    depth: usize,
) -> Result<()> {
    check_depth(depth, root.block)?;
    let count = s.ref_count(root.block)?;
    if count == 0 {
        return Err(MetaError::corrupt(
            root.block,
            "releasing a node that has no references",
        ));
    }
    if count == 1 {
        let blk = s.read_node(root, kind)?;
        let n = Node(&blk);
        for i in 0..n.nr() {
            if n.is_leaf() {
                s.dec_value(kind, n.value(i))?;
            } else {
                dec_rec(s, n.child(i), kind, depth + 1)?;
            }
        }
    }
    s.ref_delta(root.block, -1);
    Ok(())
}

fn insert_rec<S: NodeStore + ?Sized>(
    s: &mut S,
    r: BlockRef,
    kind: TreeKind,
    key: u64,
    value: &[u8],
    depth: usize,
    old: &mut Option<Vec<u8>>,
) -> Result<Outcome> {
    check_depth(depth, r.block)?;
    let me = shadow_node(s, r, kind)?;
    let buf = s.block_mut(me.block)?;
    let n = Node(buf);
    if n.is_leaf() {
        match n.search(key) {
            Ok(i) => {
                *old = Some(n.value(i).to_vec());
                set_value(buf, i, value);
                Ok(Outcome::Done(me))
            }
            Err(i) => insert_or_split(s, me, kind, i, key, value),
        }
    } else {
        let i = n.child_index(key);
        if n.nr() > 0 && key < n.key(0) {
            set_key(buf, 0, key);
        }
        let child = Node(buf).child(i);
        match insert_rec(s, child, kind, key, value, depth + 1, old)? {
            Outcome::Done(c) => {
                let buf = s.block_mut(me.block)?;
                set_value(buf, i, &encode_ref(c));
                Ok(Outcome::Done(me))
            }
            Outcome::Split(l, k, rr) => {
                let buf = s.block_mut(me.block)?;
                set_value(buf, i, &encode_ref(l));
                insert_or_split(s, me, kind, i + 1, k, &encode_ref(rr))
            }
        }
    }
}

/// Insert entry `(key, value)` at position `i` of the (shadowed) node `me`, splitting it
/// in two when it is full.
fn insert_or_split<S: NodeStore + ?Sized>(
    s: &mut S,
    me: BlockRef,
    kind: TreeKind,
    i: usize,
    key: u64,
    value: &[u8],
) -> Result<Outcome> {
    let (nr, max, leaf) = {
        let buf = s.block_mut(me.block)?;
        let n = Node(buf);
        (n.nr(), n.max(), n.is_leaf())
    };
    if nr < max {
        let buf = s.block_mut(me.block)?;
        insert_entry(buf, i, key, value);
        return Ok(Outcome::Done(me));
    }
    let (rref, mut rbuf) = new_node(s, kind, leaf)?;
    let half = nr / 2;
    let lbuf = s.block_mut(me.block)?;
    for j in half..nr {
        let (k, v) = {
            let n = Node(lbuf);
            (n.key(j), n.value(j).to_vec())
        };
        insert_entry(&mut rbuf, j - half, k, &v);
    }
    set_nr(lbuf, half);
    if i < half {
        insert_entry(lbuf, i, key, value);
    } else {
        insert_entry(&mut rbuf, i - half, key, value);
    }
    let rkey = Node(&rbuf).key(0);
    s.put_block(rref.block, rbuf)?;
    s.note_shadowed(rref.block);
    Ok(Outcome::Split(me, rkey, rref))
}

fn remove_rec<S: NodeStore + ?Sized>(
    s: &mut S,
    r: BlockRef,
    kind: TreeKind,
    key: u64,
    old: &mut Option<Vec<u8>>,
) -> Result<BlockRef> {
    let me = shadow_node(s, r, kind)?;
    let buf = s.block_mut(me.block)?;
    let n = Node(buf);
    if n.is_leaf() {
        if let Ok(i) = n.search(key) {
            *old = Some(n.value(i).to_vec());
            remove_entry(buf, i);
        }
        return Ok(me);
    }
    let i = n.child_index(key);
    let child = n.child(i);
    let c = remove_rec(s, child, kind, key, old)?;
    let child_empty = {
        let blk = s.read_node(c, kind)?;
        Node(&blk).nr() == 0
    };
    let buf = s.block_mut(me.block)?;
    if child_empty {
        remove_entry(buf, i);
        // The emptied child was shadowed: a single reference, no children left.
        s.ref_delta(c.block, -1);
    } else {
        set_value(buf, i, &encode_ref(c));
        rebalance(s, me, kind, i)?;
    }
    Ok(me)
}

/// A node on a removal path that fell below a third of its capacity shares entries with a
/// neighbour, like persistent-data's `rebalance2`: both go into one node when they fit
/// (the other is released), otherwise they are split evenly between the two. Without it,
/// discards that thin out a tree leave nearly empty nodes behind, and the metadata they
/// take is never returned (docs/design.md §3). Child `i` of the shadowed node `me` was
/// shadowed by the removal; the neighbour is shadowed here.
fn rebalance<S: NodeStore + ?Sized>(
    s: &mut S,
    me: BlockRef,
    kind: TreeKind,
    i: usize,
) -> Result<()> {
    let (siblings, child) = {
        let n = Node(s.block_mut(me.block)?);
        (n.nr(), n.child(i))
    };
    let (nr, max) = {
        let blk = s.read_node(child, kind)?;
        let n = Node(&blk);
        (n.nr(), n.max())
    };
    if siblings < 2 || nr >= max / UNDERFULL_DIV {
        return Ok(());
    }
    let li = if i + 1 < siblings { i } else { i - 1 };
    let (l, r) = {
        let n = Node(s.block_mut(me.block)?);
        (n.child(li), n.child(li + 1))
    };
    // The child comes back as it is (shadowed already); the neighbour gets its own copy.
    let l = shadow_node(s, l, kind)?;
    let r = shadow_node(s, r, kind)?;
    let mut keys = Vec::with_capacity(2 * max);
    let mut values = Vec::new();
    for x in [l, r] {
        let n = Node(s.block_mut(x.block)?);
        keys.extend((0..n.nr()).map(|j| n.key(j)));
        values.extend_from_slice(n.values());
    }
    let vs = values.len() / keys.len().max(1);
    if keys.len() <= max {
        set_entries(s.block_mut(l.block)?, &keys, &values);
        let buf = s.block_mut(me.block)?;
        set_value(buf, li, &encode_ref(l));
        remove_entry(buf, li + 1);
        // `r` is a shadow with a single reference and its entries moved to `l`: releasing
        // it releases nothing below.
        s.ref_delta(r.block, -1);
    } else {
        let h = keys.len() / 2;
        set_entries(s.block_mut(l.block)?, &keys[..h], &values[..h * vs]);
        set_entries(s.block_mut(r.block)?, &keys[h..], &values[h * vs..]);
        let buf = s.block_mut(me.block)?;
        set_value(buf, li, &encode_ref(l));
        set_value(buf, li + 1, &encode_ref(r));
        set_key(buf, li + 1, keys[h]);
    }
    Ok(())
}
