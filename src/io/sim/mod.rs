//! `SimDev`: a simulated device for crash injection (docs/design.md §6).
//!
//! Devices are created in a [`SimGroup`] sharing one event clock. Every write is recorded
//! (offset, bytes, global sequence number); a flush freezes the writes since the previous
//! flush into an immutable layer. Just before every flush, on any device of the group, the
//! group captures a [`CrashPoint`]: for each device, its durable layers (shared by `Arc`, never
//! copied) and the writes still unflushed. Any crash instant between two flushes is covered by
//! a subset of the unflushed writes at the next flush, so exploring subsets at these points
//! explores every crash instant.
//!
//! A post-crash image ([`CrashImage`]) stacks a new layer holding the chosen subset (writes
//! dropped, applied in a shuffled order, torn at 512-byte sectors) on top of the durable
//! layers: copy-on-write, never a full copy per state.
//!
//! `layer` holds the layers and each device's write log, `group` the group, its devices and
//! the capture of crash points, `image` the crash points and the post-crash images.

mod group;
mod image;
mod layer;

pub use group::{SimDev, SimGroup};
pub use image::{CrashFaults, CrashImage, CrashPoint, DevSnapshot};
pub use layer::{Layer, WriteRec, SECTOR};
