//! What can still be read from damaged metadata (`thinpool repair`, as thin_repair does
//! with `thin_dump --repair`): the best commit record, then every readable node of its trees,
//! into a [`PoolDump`], with exactly which volume byte ranges could not be read.
//!
//! Nothing here goes through the transaction manager or the cache: every block is read from
//! the device and checked on its own (type, checksum, own number, pool UUID, the generation
//! its parent recorded, tree kind, shape, key order within the bounds the parent gives). A
//! node that fails any check is lost with its whole subtree; its key range, which the parent
//! knows, is what is reported lost. The space maps are not read at all: `restore` rebuilds
//! them from the mappings.

use super::model::{DeviceDump, DumpError, PoolDump, Result};
use crate::io::BlockDev;
use crate::meta::block::{self, get_u64, BlockType};
use crate::meta::btree::{Node, TreeKind};
use crate::meta::journal::{self, BlockRef, Record, RootId};
use crate::meta::label::Label;
use crate::meta::BLOCK_SIZE;
use crate::pool::details::{Details, DETAILS};
use crate::pool::trees::{unpack_mapping, DEV_ROOTS, MAPPING};
use std::collections::BTreeMap;
use std::sync::Arc;

/// No real tree is this deep; a deeper path loops through a damaged pointer.
const MAX_DEPTH: u32 = 64;

/// Something repair could not recover.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Lost {
    /// The volume, when known (`None`: a range of volume ids, or a whole commit).
    pub volume: Option<String>,
    pub id: Option<u64>,
    /// Volume bytes `[offset, offset + length)` whose mappings could not be read (they read
    /// as zeros after the repair). Zero length for a lost commit or id range.
    pub offset: u64,
    pub length: u64,
    /// What was damaged, and where.
    pub why: String,
    pub block: Option<u64>,
}

impl Lost {
    /// A loss of no one volume's bytes: a commit, or a range of volume ids.
    fn of_pool(why: String, block: Option<u64>) -> Lost {
        Lost {
            volume: None,
            id: None,
            offset: 0,
            length: 0,
            why,
            block,
        }
    }
}

/// What a salvage found.
#[derive(Debug, Clone)]
pub struct Salvage {
    pub label: Label,
    /// The newest valid record, and the one the salvage read.
    pub newest_seq: u64,
    pub chosen_seq: u64,
    /// Records newer than the chosen one that were passed over, with the reason; journal
    /// slots that hold no valid record.
    pub skipped: Vec<(u64, String)>,
    pub bad_slots: Vec<String>,
    pub lost: Vec<Lost>,
    /// The pool as far as it could be read (names and sizes from the details tree).
    pub dump: PoolDump,
}

/// Read a damaged pool's metadata device and salvage what it can.
pub fn salvage(dev: Arc<dyn BlockDev>) -> Result<Salvage> {
    let bad = |m: String| DumpError::input(m);
    let mut lbuf = vec![0u8; BLOCK_SIZE];
    dev.read_at(&mut lbuf, 0).map_err(|source| DumpError::Io {
        what: "cannot read the label".into(),
        source,
    })?;
    let label = Label::decode(&lbuf).map_err(|e| {
        bad(format!(
            "the label (block 0) is unreadable, so the block size and pool UUID are unknown: {e}"
        ))
    })?;
    let slots = journal::scan(dev.as_ref(), &label.uuid, label.ring_slots)
        .map_err(|e| bad(format!("cannot read the journal: {e}")))?;
    let mut bad_slots = Vec::new();
    let mut recs: BTreeMap<u64, Record> = BTreeMap::new();
    for s in &slots {
        match &s.result {
            Ok(r) => {
                recs.insert(r.seq, r.clone());
            }
            Err(e) if e != "empty" => bad_slots.push(format!(
                "ring {} slot {} (block {}): {e}",
                if s.ring == 0 { 'A' } else { 'B' },
                s.slot,
                s.block.0
            )),
            Err(_) => {}
        }
    }
    let Some(&newest_seq) = recs.keys().next_back() else {
        return Err(bad(format!(
            "no journal slot holds a valid record ({})",
            bad_slots.join("; ")
        )));
    };
    // A damaged slot where the next commit's record would go: that commit may have been
    // acknowledged (a crash during a commit leaves the same, unacknowledged, so it cannot
    // be told apart).
    let next_slot = ((newest_seq + 1) % label.ring_slots as u64) as u32;
    let next_damaged: Vec<String> = slots
        .iter()
        .filter(|s| s.slot == next_slot && s.result.as_ref().is_err_and(|e| e != "empty"))
        .map(|s| format!("ring {}", if s.ring == 0 { 'A' } else { 'B' }))
        .collect();
    let mut w = Walker {
        dev,
        uuid: label.uuid,
        meta_blocks: label.meta_blocks,
        damage: Vec::new(),
    };
    let mut lost = Vec::new();
    // The newest record whose top-level tree root reads: a record whose roots are damaged
    // is passed over for an older one.
    let mut skipped = Vec::new();
    let mut chosen = None;
    for (&seq, rec) in recs.iter().rev() {
        match w.check_root(rec.root(RootId::User1), DEV_ROOTS) {
            Ok(()) => {
                chosen = Some(rec.clone());
                break;
            }
            Err(e) => skipped.push((seq, format!("its top-level mapping tree root: {e}"))),
        }
    }
    let Some(rec) = chosen else {
        return Err(bad(format!(
            "no record's top-level mapping tree is readable: {}",
            skipped
                .iter()
                .map(|(s, e)| format!("seq {s}: {e}"))
                .collect::<Vec<_>>()
                .join("; ")
        )));
    };
    if !next_damaged.is_empty() {
        lost.push(Lost::of_pool(
            format!(
                "the record in slot {next_slot} ({}), where commit {} would be, is damaged: if \
                 that commit was acknowledged, what it changed is lost",
                next_damaged.join(" and "),
                newest_seq + 1
            ),
            None,
        ));
    }
    for (seq, why) in &skipped {
        lost.push(Lost::of_pool(
            format!("commit {seq} (what it changed since the one before): {why}"),
            None,
        ));
    }

    let bs = label.data_block_size;
    let mut details = BTreeMap::new();
    w.walk(
        rec.root(RootId::User0).r,
        DETAILS,
        "details tree",
        &mut |k, v| {
            details.insert(k, Details::decode(v));
        },
    );
    let details_lost = w.take_damage();
    for d in &details_lost {
        lost.push(Lost::of_pool(
            format!(
                "the details of volume ids {} are lost (volumes found there in the top-level \
                 tree are named recovered-ID): {}",
                id_range(d.lo, d.hi),
                d.why
            ),
            Some(d.block),
        ));
    }
    let mut roots = BTreeMap::new();
    w.walk(
        rec.root(RootId::User1).r,
        DEV_ROOTS,
        "top-level tree",
        &mut |k, v| {
            roots.insert(k, journal::decode_ref(v));
        },
    );
    // Volumes whose mapping root was lost: all of each is lost. Volumes whose details were
    // lost but whose mappings are there come back named by id.
    let top_lost = w.take_damage();
    for (&id, d) in &details {
        if roots.contains_key(&id) {
            continue;
        }
        if let Some(dmg) = top_lost.iter().find(|x| (x.lo..x.hi).contains(&id)) {
            lost.push(Lost {
                volume: Some(d.name.clone()),
                id: Some(id),
                offset: 0,
                length: d.size,
                why: format!("its whole mapping tree: {}", dmg.why),
                block: Some(dmg.block),
            });
        }
    }
    for dmg in &top_lost {
        if !details.keys().any(|id| (dmg.lo..dmg.hi).contains(id)) {
            lost.push(Lost::of_pool(
                format!(
                    "volume ids {} of the top-level tree, of which no details remain: {}",
                    id_range(dmg.lo, dmg.hi),
                    dmg.why
                ),
                Some(dmg.block),
            ));
        }
    }
    let mut devices = Vec::new();
    for (&id, &root) in &roots {
        let known = details.get(&id).cloned();
        if known.is_none() && !details_lost.iter().any(|x| (x.lo..x.hi).contains(&id)) {
            // In the top-level tree but in no details node, damaged or not: not a volume.
            continue;
        }
        let name = known
            .as_ref()
            .map_or_else(|| format!("recovered-{id}"), |d| d.name.clone());
        let mut dev = DeviceDump {
            dev_id: id,
            mapped_blocks: 0,
            transaction: 0,
            creation_time: known.as_ref().map_or(0, |d| d.snap_time),
            snap_time: known.as_ref().map_or(0, |d| d.snap_time),
            name: Some(name.clone()),
            size: None,
            read_only: known.as_ref().is_some_and(|d| d.read_only),
            origin: known.as_ref().and_then(|d| d.origin).map(|o| o.0),
            created: known.as_ref().map(|d| d.created),
            mappings: Vec::new(),
        };
        let label_blocks = rec.data_blocks;
        let mut out_of_pool = Vec::new();
        w.walk(
            root,
            MAPPING,
            &format!("mapping tree of '{name}'"),
            &mut |vb, v| {
                let (b, time) = unpack_mapping(get_u64(v, 0));
                if b.0 >= label_blocks {
                    out_of_pool.push(vb);
                    return;
                }
                dev.push_mapping(vb, b.0, time);
            },
        );
        let covered = dev
            .mappings
            .last()
            .map_or(0, |r| (r.origin_begin + r.length) * bs);
        let size = known
            .as_ref()
            .map_or(covered, |d| d.size.max(covered))
            .max(bs);
        dev.size = Some(size);
        // What its walk lost, as byte ranges of the volume (clipped to its size).
        for dmg in w.take_damage() {
            let offset = dmg.lo.saturating_mul(bs).min(size);
            let end = dmg.hi.saturating_mul(bs).min(size);
            lost.push(Lost {
                volume: Some(name.clone()),
                id: Some(id),
                offset,
                length: end - offset,
                why: dmg.why,
                block: Some(dmg.block),
            });
        }
        for vb in out_of_pool {
            lost.push(Lost {
                volume: Some(name.clone()),
                id: Some(id),
                offset: vb * bs,
                length: bs,
                why: "its mapping names a data block past the end of the pool".into(),
                block: None,
            });
        }
        devices.push(dev);
    }
    // Origins that are gone are forgotten, as a removed origin's are.
    let ids: std::collections::HashSet<u64> = devices.iter().map(|d| d.dev_id).collect();
    for d in &mut devices {
        if d.origin.is_some_and(|o| !ids.contains(&o)) {
            d.origin = None;
        }
    }
    let [_, time] = rec.counters;
    Ok(Salvage {
        label: label.clone(),
        newest_seq,
        chosen_seq: rec.seq,
        skipped,
        bad_slots,
        lost,
        dump: PoolDump {
            uuid: crate::pool::format_uuid(&label.uuid),
            time: time.min(0xff_ffff) as u32,
            transaction: rec.seq,
            flags: 0,
            version: 2,
            data_block_size: (bs / 512) as u32,
            nr_data_blocks: rec.data_blocks,
            devices,
        },
    })
}

fn id_range(lo: u64, hi: u64) -> String {
    if hi == u64::MAX {
        format!("{lo} and up")
    } else {
        format!("{lo} to {}", hi - 1)
    }
}

/// A subtree that could not be read: the keys `[lo, hi)` its parent gives it.
struct Damage {
    lo: u64,
    hi: u64,
    why: String,
    block: u64,
}

/// Reads nodes one at a time, each checked in full; what fails is recorded in `damage`.
struct Walker {
    dev: Arc<dyn BlockDev>,
    uuid: [u8; 16],
    meta_blocks: u64,
    damage: Vec<Damage>,
}

impl Walker {
    /// Read and check one node reached through `r`.
    fn node(&self, r: BlockRef, kind: TreeKind) -> std::result::Result<Vec<u8>, String> {
        if r.block.0 == 0 || r.block.0 >= self.meta_blocks {
            return Err(format!(
                "pointer to block {} lies outside the metadata",
                r.block.0
            ));
        }
        let mut buf = vec![0u8; BLOCK_SIZE];
        self.dev
            .read_at(&mut buf, r.block.0 * BLOCK_SIZE as u64)
            .map_err(|e| format!("read failed: {e}"))?;
        block::verify(&buf, Some(BlockType::Node), r.block, &self.uuid)
            .map_err(|e| e.to_string())?;
        let gen = block::generation(&buf);
        if gen != r.gen {
            return Err(format!(
                "generation {gen}, but its parent recorded {} (the block was reused)",
                r.gen
            ));
        }
        let n = Node(&buf);
        if n.kind_id() != kind.id {
            return Err(format!(
                "a node of tree kind {} where {kind} was expected",
                n.kind_id()
            ));
        }
        n.validate_shape()?;
        let want_vs = if n.is_leaf() { kind.value_size } else { 16 };
        if n.value_size() != want_vs {
            return Err(format!("value size {} should be {want_vs}", n.value_size()));
        }
        Ok(buf)
    }

    fn check_root(&self, root: journal::Root, kind: TreeKind) -> std::result::Result<(), String> {
        let buf = self.node(root.r, kind)?;
        if block::stored_crc(&buf) != root.crc {
            return Err(format!(
                "block {} is not the node the record names",
                root.r.block.0
            ));
        }
        Ok(())
    }

    /// Visit every readable entry of a tree in key order; record each unreadable subtree.
    fn walk(&mut self, root: BlockRef, kind: TreeKind, what: &str, f: &mut dyn FnMut(u64, &[u8])) {
        let mut path = Vec::new();
        self.rec(root, kind, what, 0, u64::MAX, &mut path, f);
    }

    #[allow(clippy::too_many_arguments)]
    fn rec(
        &mut self,
        r: BlockRef,
        kind: TreeKind,
        what: &str,
        lo: u64,
        hi: u64,
        path: &mut Vec<u64>,
        f: &mut dyn FnMut(u64, &[u8]),
    ) {
        let lose = |w: &mut Walker, why: String| {
            w.damage.push(Damage {
                lo,
                hi,
                why: format!("{what}: the node at metadata block {}: {why}", r.block.0),
                block: r.block.0,
            });
        };
        if path.len() as u32 > MAX_DEPTH || path.contains(&r.block.0) {
            lose(self, "the tree loops back to it".into());
            return;
        }
        let buf = match self.node(r, kind) {
            Ok(b) => b,
            Err(e) => return lose(self, e),
        };
        let n = Node(&buf);
        for i in 0..n.nr() {
            let k = n.key(i);
            if k < lo || k >= hi || (i > 0 && k <= n.key(i - 1)) {
                return lose(self, format!("key {k} is out of order"));
            }
        }
        if n.is_leaf() {
            for i in 0..n.nr() {
                f(n.key(i), n.value(i));
            }
            return;
        }
        path.push(r.block.0);
        for i in 0..n.nr() {
            // The first child covers everything from the parent's lower bound.
            let clo = if i == 0 { lo } else { n.key(i) };
            let chi = if i + 1 < n.nr() { n.key(i + 1) } else { hi };
            self.rec(n.child(i), kind, what, clo, chi, path, f);
        }
        path.pop();
    }

    /// What the walks since the last call could not read.
    fn take_damage(&mut self) -> Vec<Damage> {
        std::mem::take(&mut self.damage)
    }
}
