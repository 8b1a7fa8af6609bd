use std::sync::Arc;
use thinpool::io::{BlockDev, MemDev};
use thinpool::pool::{CreateOptions, OpenOptions, Pool};

fn mem_pool(size: u64, bs: u64) -> (Pool, Arc<dyn BlockDev>, Arc<dyn BlockDev>) {
    let meta: Arc<dyn BlockDev> = Arc::new(MemDev::new(64 << 20).unwrap());
    let data: Arc<dyn BlockDev> = Arc::new(MemDev::new(size).unwrap());
    let mut o = CreateOptions::new(size);
    o.block_size = bs;
    let p = Pool::create_on(meta.clone(), data.clone(), &o).unwrap();
    (p, meta, data)
}

#[test]
fn write_read_snapshot_reopen() {
    let (mut p, meta, data) = mem_pool(64 << 20, 4096);
    let base = p.info().unwrap();
    let a = p.create_volume("a", 1 << 30, false).unwrap();
    p.write(a, 100, b"hello world").unwrap();
    let mut buf = vec![0u8; 11];
    p.read(a, 100, &mut buf).unwrap();
    assert_eq!(&buf, b"hello world");
    p.snapshot("a", "s", false).unwrap();
    p.write(a, 100, b"HELLO").unwrap();
    let s = p.volume_id("s").unwrap();
    p.read(s, 100, &mut buf).unwrap();
    assert_eq!(&buf, b"hello world");
    p.read(a, 100, &mut buf).unwrap();
    assert_eq!(&buf, b"HELLO world");
    // many blocks
    let big: Vec<u8> = (0..4096 * 600).map(|i| (i % 251) as u8).collect();
    p.write(a, 8192, &big).unwrap();
    p.commit().unwrap();
    drop(p);
    let mut p = Pool::open_on(meta.clone(), data.clone(), &OpenOptions::default()).unwrap();
    let a = p.volume_id("a").unwrap();
    let mut rb = vec![0u8; big.len()];
    p.read(a, 8192, &mut rb).unwrap();
    assert_eq!(rb, big);
    p.read(a, 100, &mut buf).unwrap();
    assert_eq!(&buf, b"HELLO world");
    let l = p.list().unwrap();
    assert_eq!(l.len(), 2);
    p.remove_volume("s").unwrap();
    p.remove_volume("a").unwrap();
    let info = p.info().unwrap();
    assert_eq!(info.data_blocks_used, 0);
    assert_eq!(info.metadata_blocks_used, base.metadata_blocks_used);
}

/// Bytes of the pool's data file actually allocated on disk.
fn allocated(pool_dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(pool_dir.join("data")).unwrap().blocks() * 512
}

/// A 4 KiB write into a fresh 64 KiB block writes 4 KiB, not the whole zero-filled block:
/// the data file's hole already reads as zeros. Everything around the write still reads 0.
#[test]
fn partial_write_into_a_fresh_block_writes_only_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let pd = dir.path().join("pool");
    let mut o = CreateOptions::new(64 << 20);
    o.block_size = 64 << 10;
    let mut p = Pool::create(&pd, &o).unwrap();
    let v = p.create_volume("v", 1 << 30, false).unwrap();
    let before = allocated(&pd);
    for i in 0..16u64 {
        // 4 KiB in each of 16 fresh blocks, at a different place in each.
        p.write(v, i * (1 << 20) + (i % 16) * 4096, &[0xab; 4096])
            .unwrap();
    }
    p.commit().unwrap();
    let grew = allocated(&pd) - before;
    assert!(
        grew <= 16 * 8192,
        "16 writes of 4 KiB allocated {grew} bytes of data (whole 64 KiB blocks: {})",
        16 * (64 << 10)
    );
    for i in 0..16u64 {
        let mut b = vec![1u8; 64 << 10];
        p.read(v, i * (1 << 20), &mut b).unwrap();
        let at = ((i % 16) * 4096) as usize;
        assert!(
            b[..at].iter().all(|&x| x == 0),
            "block {i}: before the write"
        );
        assert!(b[at..at + 4096].iter().all(|&x| x == 0xab), "block {i}");
        assert!(
            b[at + 4096..].iter().all(|&x| x == 0),
            "block {i}: after it"
        );
    }
}

/// A fresh block whose bytes on disk are not zeros (a freed block whose punch never
/// happened, e.g. after a crash) is zero-filled around a partial write, never shown.
#[test]
fn partial_write_into_a_block_with_stale_bytes_zero_fills_it() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let pd = dir.path().join("pool");
    let mut o = CreateOptions::new(4 << 20);
    o.block_size = 64 << 10;
    let mut p = Pool::create(&pd, &o).unwrap();
    let v = p.create_volume("v", 4 << 20, false).unwrap();
    // Stale bytes in every data block the pool may hand out.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(pd.join("data"))
        .unwrap();
    f.write_all_at(&vec![0x5a; 4 << 20], 0).unwrap();
    drop(f);
    for i in 0..64u64 {
        p.write(v, i * (64 << 10) + 1000, &[0xcd; 100]).unwrap();
    }
    let mut b = vec![1u8; 4 << 20];
    p.read(v, 0, &mut b).unwrap();
    for (i, blk) in b.chunks(64 << 10).enumerate() {
        assert!(
            blk[..1000].iter().all(|&x| x == 0),
            "block {i} shows stale bytes"
        );
        assert!(blk[1000..1100].iter().all(|&x| x == 0xcd), "block {i}");
        assert!(
            blk[1100..].iter().all(|&x| x == 0),
            "block {i} shows stale bytes"
        );
    }
}

/// Bytes the filesystem stores for `path` (its allocated blocks, not its length).
fn stored_bytes(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// With O_DIRECT, the first new block in a 4 MiB chunk of the data file allocates the whole
/// chunk (unwritten extents: direct writes into a hole serialize on the file, see
/// src/pool/extents.rs). The rest of the chunk still reads as zeros, a partial first write
/// into another block of it still leaves zeros around its bytes, and the file keeps its
/// length. Through the page cache nothing is allocated ahead.
#[test]
fn direct_first_writes_allocate_their_chunk_ahead() {
    let base = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let t = tempfile::tempdir_in(base).unwrap();
    for direct in [true, false] {
        let dir = t.path().join(format!("pool-{direct}"));
        let mut o = CreateOptions::new(64 << 20);
        o.block_size = 64 << 10;
        drop(Pool::create(&dir, &o).unwrap());
        let opts = OpenOptions {
            direct,
            ..OpenOptions::default()
        };
        let mut p = Pool::open(&dir, &opts).unwrap();
        let v = p.create_volume("v", 32 << 20, false).unwrap();
        let data = dir.join("data");
        let before = stored_bytes(&data);
        p.write(v, 0, &[7u8; 4096]).unwrap();
        p.write(v, 5 * (64 << 10) + 8192, &[9u8; 4096]).unwrap();
        p.commit().unwrap();
        let grew = stored_bytes(&data) - before;
        if direct {
            assert!(
                grew >= 4 << 20,
                "direct: {grew} bytes allocated, want the chunk"
            );
        } else {
            assert!(grew < 1 << 20, "page cache: {grew} bytes allocated ahead");
        }
        assert_eq!(std::fs::metadata(&data).unwrap().len(), 64 << 20);
        let mut blk = vec![1u8; 64 << 10];
        p.read(v, 5 * (64 << 10), &mut blk).unwrap();
        assert!(blk[..8192].iter().all(|&b| b == 0));
        assert!(blk[8192..12288].iter().all(|&b| b == 9));
        assert!(blk[12288..].iter().all(|&b| b == 0));
        p.read(v, 64 << 10, &mut blk).unwrap();
        assert!(
            blk.iter().all(|&b| b == 0),
            "an unwritten block reads zeros"
        );
        p.read(v, 0, &mut blk).unwrap();
        assert!(blk[..4096].iter().all(|&b| b == 7) && blk[4096..].iter().all(|&b| b == 0));
    }
}
