//! Reference counts: every reference found while walking the trees is counted, and the
//! counts are compared with the space maps (their index, pages, free counts and overflow
//! tree): more on disk than found is a leak, fewer is fatal.

use super::{Checker, Collected};
use crate::meta::block::{self, BlockType};
use crate::meta::spacemap::{self, ENTRIES_PER_PAGE};
use crate::meta::MetaBlock;

impl Checker<'_> {
    pub(super) fn add_meta_ref(&mut self, b: MetaBlock) {
        if let Some(x) = self.meta_refs.get_mut(b.0 as usize) {
            *x += 1;
        }
    }

    pub(super) fn add_data_ref(&mut self, b: u64) {
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

    pub(super) fn compare_space_map(
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
