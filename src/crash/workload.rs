//! The seeded random workload a crash run drives: creates, writes, discards, snapshots,
//! removals and commits on a live pool, keeping the [`Oracle`] of what every sector may read
//! after a crash (during each operation, and once it is acknowledged).

use super::config::CrashConfig;
use super::oracle::{sector_content, Exists, Oracle, VolOracle, SECTOR};
use crate::pool::{Pool, PoolError};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// The workload of a run, or of the continuation of a recovered state.
pub(super) struct Workload {
    pub(super) rng: ChaCha8Rng,
    pub(super) oracle: Oracle,
    pub(super) next_write: u64,
    pub(super) next_name: u64,
    pub(super) cfg: CrashConfig,
    /// What each operation did, for violation reports.
    pub(super) log: Vec<String>,
}

impl Workload {
    fn certain(&self) -> Vec<String> {
        self.oracle
            .vols
            .iter()
            .filter(|(_, v)| v.exists == Exists::Yes)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Run one operation; returns the oracle that holds while it is in flight.
    pub(super) fn step(&mut self, pool: &mut Pool) -> Oracle {
        let names = self.certain();
        let roll = self.rng.gen_range(0..100);
        if names.is_empty() || (roll < 6 && names.len() < self.cfg.volumes) {
            return self.create(pool);
        }
        let pick = names[self.rng.gen_range(0..names.len())].clone();
        match roll {
            0..=54 => self.write(pool, &pick),
            55..=69 => self.commit(pool),
            70..=77 if names.len() < self.cfg.volumes => self.snapshot(pool, &pick),
            78..=87 => self.discard(pool, &pick),
            88..=91 if names.len() > 1 => self.remove(pool, &pick),
            _ => self.write(pool, &pick),
        }
    }

    fn manage(
        &mut self,
        during: Oracle,
        r: Result<(), PoolError>,
        post: impl FnOnce(&mut Oracle),
    ) -> Oracle {
        match r {
            Ok(()) => {
                self.oracle.ack();
                post(&mut self.oracle);
            }
            // Out of space: nothing changed.
            Err(PoolError::Meta(_)) => {}
            Err(e) => panic!("workload operation failed unexpectedly: {e}"),
        }
        during
    }

    fn create(&mut self, pool: &mut Pool) -> Oracle {
        let name = format!("v{}", self.next_name);
        self.next_name += 1;
        let sectors = self.rng.gen_range(64..=512u64);
        let mut during = self.oracle.clone();
        during
            .vols
            .insert(name.clone(), VolOracle::new(sectors, Exists::Maybe));
        self.log.push(format!("create {name} ({sectors} sectors)"));
        let r = pool
            .create_volume(&name, sectors * SECTOR as u64, false)
            .map(|_| ());
        self.manage(during, r, |o| {
            o.vols.insert(name, VolOracle::new(sectors, Exists::Yes));
        })
    }

    fn snapshot(&mut self, pool: &mut Pool, src: &str) -> Oracle {
        let name = format!("v{}", self.next_name);
        self.next_name += 1;
        let mut during = self.oracle.clone();
        let maybe = during.snapshot_of(src, Exists::Maybe);
        during.vols.insert(name.clone(), maybe);
        self.log.push(format!("snapshot {src} -> {name}"));
        let r = pool.snapshot(src, &name, false).map(|_| ());
        let src = src.to_string();
        self.manage(during, r, move |o| {
            let v = o.snapshot_of(&src, Exists::Yes);
            o.vols.insert(name, v);
        })
    }

    fn remove(&mut self, pool: &mut Pool, name: &str) -> Oracle {
        let mut during = self.oracle.clone();
        during.vols.get_mut(name).unwrap().exists = Exists::Maybe;
        self.log.push(format!("remove {name}"));
        let r = pool.remove_volume(name);
        let name = name.to_string();
        self.manage(during, r, move |o| {
            o.vols.remove(&name);
        })
    }

    pub(super) fn commit(&mut self, pool: &mut Pool) -> Oracle {
        let during = self.oracle.clone();
        self.log.push("commit".into());
        pool.commit().expect("commit failed");
        self.oracle.ack();
        during
    }

    fn range(&mut self, name: &str, max: u64) -> (u64, u64) {
        let sectors = self.oracle.vols[name].sectors;
        let len = self.rng.gen_range(1..=max.min(sectors));
        let start = self.rng.gen_range(0..=sectors - len);
        (start, len)
    }

    fn write(&mut self, pool: &mut Pool, name: &str) -> Oracle {
        let (start, len) = self.range(name, 24);
        let w = self.next_write;
        self.next_write += 1;
        let mut buf = vec![0u8; (len as usize) * SECTOR];
        for i in 0..len {
            let at = i as usize * SECTOR;
            sector_content(w, start + i, &mut buf[at..at + SECTOR]);
        }
        let id = pool.volume_id(name).expect("volume exists");
        let mut during = self.oracle.clone();
        for i in 0..len {
            during.vols.get_mut(name).unwrap().write(start + i, w);
        }
        self.log
            .push(format!("write {w} to {name} sectors {start}+{len}"));
        match pool.write(id, start * SECTOR as u64, &buf) {
            Ok(()) => self.oracle = during.clone(),
            Err(PoolError::Meta(_)) => {} // out of space: the write changed nothing
            Err(e) => panic!("write failed unexpectedly: {e}"),
        }
        during
    }

    fn discard(&mut self, pool: &mut Pool, name: &str) -> Oracle {
        let (start, len) = self.range(name, 64);
        let id = pool.volume_id(name).expect("volume exists");
        let mut during = self.oracle.clone();
        for i in 0..len {
            during.vols.get_mut(name).unwrap().write(start + i, 0);
        }
        self.log
            .push(format!("discard {name} sectors {start}+{len}"));
        match pool.discard(id, start * SECTOR as u64, len * SECTOR as u64) {
            Ok(()) => self.oracle = during.clone(),
            Err(PoolError::Meta(_)) => {}
            Err(e) => panic!("discard failed unexpectedly: {e}"),
        }
        during
    }
}
