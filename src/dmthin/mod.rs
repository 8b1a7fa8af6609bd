//! dm-thin interoperability (issue 12): a pool described the way dm-thin's tools describe one
//! (`thin_dump`'s XML, thinpool's JSON dump), and the readers and writers that move pools
//! between that description and the on-disk formats. docs/dmthin.md describes the mapping
//! between dm-thin's fields and thinpool's.
//!
//! Everything here is built on [`model::PoolDump`]: `dump` writes one from a pool, `restore`
//! builds a pool from one, `adopt` reads one from dm-thin's own on-disk metadata.

pub mod dump;
pub mod json;
pub mod model;
pub mod restore;
pub mod xml;
