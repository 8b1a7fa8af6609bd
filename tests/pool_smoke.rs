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
