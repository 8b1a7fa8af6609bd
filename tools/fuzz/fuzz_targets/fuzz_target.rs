//! One libFuzzer binary for every harness target of `tests/common/fuzz` (the functions the
//! seeded CI runner calls). The target is chosen by the `FUZZ_TARGET` environment variable
//! (a name from `TARGETS`, e.g. `node_in_pool`): `FUZZ_TARGET=rbd_diff cargo +nightly fuzz
//! run fuzz_target`. See fuzz/README.md.
#![no_main]

#[path = "../../../tests/common/fuzz/mod.rs"]
mod fuzz_harness;

use std::sync::OnceLock;

fn chosen() -> &'static fuzz_harness::Target {
    static T: OnceLock<&'static fuzz_harness::Target> = OnceLock::new();
    T.get_or_init(|| {
        let name = std::env::var("FUZZ_TARGET").unwrap_or_else(|_| {
            let names: Vec<_> = fuzz_harness::TARGETS.iter().map(|t| t.name).collect();
            panic!("set FUZZ_TARGET to one of {names:?}")
        });
        fuzz_harness::target(&name)
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let t = chosen();
    (t.run)(&data[..data.len().min(t.max_len * 4)]);
});
