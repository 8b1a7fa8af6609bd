//! dm-thin interoperability (issue 12): a pool described the way dm-thin's tools describe one
//! (`thin_dump`'s XML, thinpool's JSON dump), and the readers and writers that move pools
//! between that description and the on-disk formats. docs/dmthin.md describes the mapping
//! between dm-thin's fields and thinpool's.
//!
//! Everything here is built on [`model::PoolDump`], streamed through [`model::DumpSink`]:
//! `dump` walks a pool into one, `xml` and `json` write and read its two formats, `restore`
//! builds a new pool from one, and `dm_meta` reads one from dm-thin's own on-disk metadata
//! (what `thinpool adopt` restores from).

pub mod dm_meta;
pub mod dump;
pub mod json;
pub mod model;
pub mod repair;
pub mod restore;
pub mod salvage;
pub mod xml;
