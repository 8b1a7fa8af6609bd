//! What a crash run explores: [`CrashConfig`] (the workload, the crash points and states, the
//! sampling of second crashes) and [`FaultSet`] (the faults injected), and the replay file
//! that records a configuration plus the one state that broke a promise.
//!
//! The replay file is JSON read and written through [`ReplayFile`] (a debugging aid, not a
//! disk format). Files written by older versions, before some fields existed, still parse:
//! every field added later has a default.

use super::report::Violation;
use serde::de::{self, IntoDeserializer};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone)]
pub struct CrashConfig {
    pub seed: u64,
    /// Workload operations.
    pub ops: usize,
    /// Most volumes alive at once.
    pub volumes: usize,
    pub block_size: u64,
    pub pool_size: u64,
    /// Post-crash states explored per crash point.
    pub states_per_point: usize,
    /// Besides those, crashes between the unflushed writes of a crash point, each write
    /// landing whole and in order up to the crash: after every write when there are at most
    /// this many, else this many evenly spaced (0: none).
    pub write_points: usize,
    /// Stop after this many states (0: no limit).
    pub max_states: u64,
    pub faults: FaultSet,
    /// Test-only: write the commit record before syncing the new metadata.
    pub broken_commit_order: bool,
    /// Test-only: the same, only in the continuations after a recovery (so only a second
    /// crash can catch it).
    pub broken_commit_order_after_recovery: bool,
    /// Only explore this (crash point, state) pair (replay).
    pub only: Option<(u64, usize)>,
    /// Continue one recovered state of one in this many crash points and crash it again
    /// (0: never).
    pub second_crash_every: u64,
    /// Post-crash states built at each crash point of a continuation.
    pub second_states_per_point: usize,
    /// Replay: continue the state `only` names and explore only this (second crash point,
    /// state) pair of its continuation (point 0: no crash, the continuation itself failed).
    pub only_second: Option<(u64, usize)>,
}

impl Default for CrashConfig {
    fn default() -> Self {
        CrashConfig {
            seed: 1,
            ops: 300,
            volumes: 4,
            block_size: 4096,
            pool_size: 16 << 20,
            states_per_point: 8,
            write_points: DEFAULT_WRITE_POINTS,
            max_states: 0,
            faults: FaultSet::default(),
            broken_commit_order: false,
            broken_commit_order_after_recovery: false,
            only: None,
            second_crash_every: DEFAULT_SECOND_CRASH_EVERY,
            second_states_per_point: 4,
            only_second: None,
        }
    }
}

/// Default sampling of states continued after recovery (one in this many crash points).
pub const DEFAULT_SECOND_CRASH_EVERY: u64 = 4;

/// Default number of crashes between the unflushed writes of one crash point.
pub const DEFAULT_WRITE_POINTS: usize = 64;

/// Which faults a run injects. `drop`, `reorder` and `torn` are what a power loss does and are
/// inside the promise: every state must recover exactly. `eio` (a metadata read fails),
/// `bitflip` (one bit of a written metadata block flips) and `misdirect` (one unflushed
/// metadata write lands on another block) are media faults beyond it, at most one per state:
/// for those the promise is that they are *detected* (recovery fails cleanly, falls back to
/// an older record and says so, the checker reports them, or the read fails) and never turn
/// into silently wrong data or a panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultSet {
    pub drop: bool,
    pub reorder: bool,
    pub torn: bool,
    pub eio: bool,
    pub bitflip: bool,
    pub misdirect: bool,
}

impl Default for FaultSet {
    fn default() -> Self {
        FaultSet {
            drop: true,
            reorder: true,
            torn: true,
            eio: false,
            bitflip: false,
            misdirect: false,
        }
    }
}

impl FaultSet {
    /// Parse `drop,reorder,torn,eio,bitflip,misdirect` (any subset).
    pub fn parse(s: &str) -> Result<FaultSet, String> {
        let mut f = FaultSet {
            drop: false,
            reorder: false,
            torn: false,
            eio: false,
            bitflip: false,
            misdirect: false,
        };
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "drop" => f.drop = true,
                "reorder" => f.reorder = true,
                "torn" => f.torn = true,
                "eio" => f.eio = true,
                "bitflip" => f.bitflip = true,
                "misdirect" => f.misdirect = true,
                other => {
                    return Err(format!(
                    "unknown fault '{other}' (known: drop, reorder, torn, eio, bitflip, misdirect)"
                ))
                }
            }
        }
        Ok(f)
    }

    pub fn names(&self) -> String {
        let all = [
            ("drop", self.drop),
            ("reorder", self.reorder),
            ("torn", self.torn),
            ("eio", self.eio),
            ("bitflip", self.bitflip),
            ("misdirect", self.misdirect),
        ];
        all.iter()
            .filter(|(_, on)| *on)
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub(super) fn media(&self) -> bool {
        self.eio || self.bitflip || self.misdirect
    }
}

/// The replay file: the whole configuration plus the one state to explore. The field names
/// are the file's JSON keys.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayFile {
    /// Always 1: marks the file (checked before anything else).
    thinpool_crash_replay: u64,
    seed: u64,
    ops: usize,
    volumes: usize,
    block_size: u64,
    pool_size: u64,
    states_per_point: usize,
    /// Replay files written before write points existed had none.
    #[serde(default)]
    write_points: usize,
    /// [`FaultSet::names`].
    #[serde(default = "default_faults")]
    faults: String,
    #[serde(default)]
    broken_commit_order: bool,
    #[serde(default)]
    broken_commit_order_after_recovery: bool,
    /// The crash point and state to explore.
    point: u64,
    state: usize,
    #[serde(default = "default_second_crash_every")]
    second_crash_every: u64,
    #[serde(default = "default_second_states_per_point")]
    second_states_per_point: usize,
    /// The violation's message (for the reader; a replay does not use it).
    #[serde(default)]
    message: String,
    /// The state of the continuation to explore, when the violation came after a second
    /// crash (both or neither).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    second_point: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    second_state: Option<usize>,
}

fn default_faults() -> String {
    "drop,reorder,torn".into()
}

fn default_second_crash_every() -> u64 {
    DEFAULT_SECOND_CRASH_EVERY
}

fn default_second_states_per_point() -> usize {
    4
}

impl CrashConfig {
    /// A replay file for `v`: the whole configuration plus the one state to explore.
    pub fn replay_json(&self, v: &Violation) -> serde_json::Value {
        let file = ReplayFile {
            thinpool_crash_replay: 1,
            seed: self.seed,
            ops: self.ops,
            volumes: self.volumes,
            block_size: self.block_size,
            pool_size: self.pool_size,
            states_per_point: self.states_per_point,
            write_points: self.write_points,
            faults: self.faults.names(),
            broken_commit_order: self.broken_commit_order,
            broken_commit_order_after_recovery: self.broken_commit_order_after_recovery,
            point: v.point,
            state: v.state,
            second_crash_every: self.second_crash_every,
            second_states_per_point: self.second_states_per_point,
            message: v.message.clone(),
            second_point: v.second.map(|s| s.point),
            second_state: v.second.map(|s| s.state),
        };
        serde_json::to_value(file).expect("a replay file is plain JSON")
    }

    /// The configuration a replay file describes (it explores only the recorded state).
    pub fn from_replay(j: &serde_json::Value) -> Result<CrashConfig, String> {
        let (Some(1), Some(obj)) = (
            j.get("thinpool_crash_replay").and_then(|v| v.as_u64()),
            j.as_object(),
        ) else {
            return Err(
                "not a thinpool crash replay file (missing \"thinpool_crash_replay\": 1)".into(),
            );
        };
        let fields = obj
            .iter()
            .map(|(k, v)| (k.as_str(), Field { key: k, value: v }));
        let f = ReplayFile::deserialize(de::value::MapDeserializer::new(fields))
            .map_err(|e: serde_json::Error| format!("replay file: {e}"))?;
        let only_second = match (f.second_point, f.second_state) {
            (None, None) => None,
            (Some(p), Some(s)) => Some((p, s)),
            (Some(_), None) => return Err("replay file: missing field `second_state`".into()),
            (None, Some(_)) => return Err("replay file: missing field `second_point`".into()),
        };
        Ok(CrashConfig {
            seed: f.seed,
            ops: f.ops,
            volumes: f.volumes,
            block_size: f.block_size,
            pool_size: f.pool_size,
            states_per_point: f.states_per_point,
            write_points: f.write_points,
            max_states: 0,
            faults: FaultSet::parse(&f.faults)?,
            broken_commit_order: f.broken_commit_order,
            broken_commit_order_after_recovery: f.broken_commit_order_after_recovery,
            only: Some((f.point, f.state)),
            second_crash_every: f.second_crash_every,
            second_states_per_point: f.second_states_per_point,
            only_second,
        })
    }
}

/// One value of a replay file, deserialized as the value itself but with its key in the
/// error (`"seed": invalid type: string "x", expected u64`): serde's own message for a
/// value of the wrong type does not say which field it was.
struct Field<'a> {
    key: &'a str,
    value: &'a serde_json::Value,
}

impl Field<'_> {
    fn named(&self, e: serde_json::Error) -> serde_json::Error {
        de::Error::custom(format!("\"{}\": {e}", self.key))
    }
}

impl<'de> de::Deserializer<'de> for Field<'de> {
    type Error = serde_json::Error;

    fn deserialize_any<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        de::Deserializer::deserialize_any(self.value, visitor).map_err(|e| self.named(e))
    }

    fn deserialize_option<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        de::Deserializer::deserialize_option(self.value, visitor).map_err(|e| self.named(e))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

impl<'de> IntoDeserializer<'de, serde_json::Error> for Field<'de> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crash::SecondCrash;

    #[test]
    fn fault_names_round_trip_and_reject_unknown() {
        let f = FaultSet::parse("drop,torn,bitflip").unwrap();
        assert!(f.drop && f.torn && f.bitflip && !f.reorder && !f.eio && !f.misdirect);
        assert_eq!(FaultSet::parse(&f.names()).unwrap(), f);
        assert!(FaultSet::parse("drop,melt").unwrap_err().contains("melt"));
    }

    fn violation(second: Option<SecondCrash>) -> Violation {
        Violation {
            seed: 7,
            point: 12,
            state: 3,
            op: 40,
            second,
            message: "boom".into(),
        }
    }

    #[test]
    fn a_replay_file_round_trips() {
        let cfg = CrashConfig {
            seed: 7,
            write_points: 5,
            faults: FaultSet::parse("drop,eio").unwrap(),
            broken_commit_order_after_recovery: true,
            ..Default::default()
        };
        let second = SecondCrash {
            point: 2,
            state: 1,
            op: 4,
        };
        for (v, only_second) in [
            (violation(None), None),
            (violation(Some(second)), Some((2, 1))),
        ] {
            let j = cfg.replay_json(&v);
            assert_eq!(j["message"], "boom");
            assert_eq!(j.get("second_point").is_some(), only_second.is_some());
            let text = serde_json::to_string_pretty(&j).unwrap();
            let back = CrashConfig::from_replay(&serde_json::from_str(&text).unwrap()).unwrap();
            assert_eq!(back.only, Some((12, 3)));
            assert_eq!(back.only_second, only_second);
            assert_eq!(back.max_states, 0);
            assert_eq!(
                format!("{back:?}"),
                format!(
                    "{:?}",
                    CrashConfig {
                        only: Some((12, 3)),
                        only_second,
                        ..cfg.clone()
                    }
                )
            );
        }
    }

    #[test]
    fn a_replay_file_of_the_first_version_parses_with_defaults() {
        // What replay files held before write points and second crashes existed.
        let j = serde_json::json!({
            "thinpool_crash_replay": 1, "seed": 3, "ops": 50, "volumes": 2,
            "block_size": 4096, "pool_size": 16777216, "states_per_point": 8,
            "faults": "drop,torn", "broken_commit_order": true,
            "point": 9, "state": 1, "message": "x",
        });
        let c = CrashConfig::from_replay(&j).unwrap();
        assert_eq!(c.write_points, 0);
        assert_eq!(c.second_crash_every, DEFAULT_SECOND_CRASH_EVERY);
        assert_eq!(c.second_states_per_point, 4);
        assert!(c.broken_commit_order && !c.broken_commit_order_after_recovery);
        assert_eq!(c.faults, FaultSet::parse("drop,torn").unwrap());
        assert_eq!((c.only, c.only_second), (Some((9, 1)), None));
        let mut j = j;
        j.as_object_mut().unwrap().remove("faults");
        assert_eq!(
            CrashConfig::from_replay(&j).unwrap().faults,
            FaultSet::default()
        );
    }

    #[test]
    fn a_bad_replay_file_is_an_error_naming_the_field() {
        let good = CrashConfig::default().replay_json(&violation(None));
        let with = |f: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>)| {
            let mut j = good.clone();
            f(j.as_object_mut().unwrap());
            CrashConfig::from_replay(&j).unwrap_err()
        };
        let e = with(&|m| {
            m.remove("thinpool_crash_replay");
        });
        assert!(e.contains("not a thinpool crash replay file"), "{e}");
        let e = with(&|m| {
            m.remove("seed");
        });
        assert!(e.contains("missing field `seed`"), "{e}");
        let e = with(&|m| {
            m.insert("sede".into(), 1.into());
        });
        assert!(e.contains("unknown field `sede`"), "{e}");
        let e = with(&|m| {
            m.insert("ops".into(), "many".into());
        });
        assert!(e.contains("\"ops\"") && e.contains("invalid type"), "{e}");
        let e = with(&|m| {
            m.insert("second_point".into(), 1.into());
        });
        assert!(e.contains("second_state"), "{e}");
        let e = with(&|m| {
            m.insert("faults".into(), "drop,melt".into());
        });
        assert!(e.contains("melt"), "{e}");
        assert!(CrashConfig::from_replay(&serde_json::json!([1])).is_err());
    }
}
