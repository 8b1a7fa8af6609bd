//! Choosing the I/O engine of a data file: [`Engine`] (`auto`, `uring`, `sync`) and
//! [`open_data_dev`].
//!
//! Invariants: `auto` uses io_uring exactly when [`super::uring::available`] says it may and
//! the rings can be set up, and otherwise pread/pwrite ([`FileDev`]), saying so in one line
//! on stderr (once per process); `uring` never falls back, it fails; `sync` never touches
//! io_uring. Every engine gives the same bytes: only speed differs.

use super::{uring, BlockDev, FileDev, UringDev};
use std::fmt;
use std::io;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Which engine moves a data file's bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Engine {
    /// io_uring where this process may use it, else pread/pwrite.
    #[default]
    Auto,
    /// io_uring, or an error.
    Uring,
    /// pread/pwrite.
    Sync,
}

impl FromStr for Engine {
    type Err = String;
    fn from_str(s: &str) -> Result<Engine, String> {
        match s {
            "auto" => Ok(Engine::Auto),
            "uring" => Ok(Engine::Uring),
            "sync" => Ok(Engine::Sync),
            _ => Err(format!(
                "unknown I/O engine '{s}' (expected auto, uring or sync)"
            )),
        }
    }
}

impl Engine {
    /// The engine `THINPOOL_IO_ENGINE` names (how the test suite runs everything on each
    /// engine), or `Auto`. An unknown name is `Auto` too: the command line's `--io-engine`
    /// is where a typo is an error.
    pub fn from_env() -> Engine {
        std::env::var("THINPOOL_IO_ENGINE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_default()
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Engine::Auto => "auto",
            Engine::Uring => "uring",
            Engine::Sync => "sync",
        })
    }
}

/// Open the data file `path` (read-write when `writable`, O_DIRECT when `direct`) with
/// `engine`. With [`Engine::Auto`] and io_uring unavailable, falls back to [`FileDev`] and
/// prints one line saying why (the first time only); with [`Engine::Uring`] and io_uring
/// unavailable, fails with `ErrorKind::Unsupported` and the reason.
pub fn open_data_dev(
    path: &Path,
    writable: bool,
    direct: bool,
    engine: Engine,
) -> io::Result<Arc<dyn BlockDev>> {
    static SAID: AtomicBool = AtomicBool::new(false);
    let opened = open_with_probe(path, writable, direct, engine, uring::available())?;
    if let Some(note) = opened.note {
        if !SAID.swap(true, Ordering::Relaxed) {
            tracing::warn!("{note}");
        }
    }
    Ok(opened.dev)
}

/// What [`open_with_probe`] opened.
pub(crate) struct Opened {
    pub(crate) dev: Arc<dyn BlockDev>,
    /// The engine used: never `Auto` (what the tests check).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) engine: Engine,
    /// The line to print about a fallback.
    pub(crate) note: Option<String>,
}

/// [`open_data_dev`] with the probe's answer given (so tests can pretend io_uring is off).
pub(crate) fn open_with_probe(
    path: &Path,
    writable: bool,
    direct: bool,
    engine: Engine,
    probe: Result<(), String>,
) -> io::Result<Opened> {
    let sync = |note| -> io::Result<Opened> {
        Ok(Opened {
            dev: Arc::new(FileDev::open_with(path, writable, direct)?),
            engine: Engine::Sync,
            note,
        })
    };
    let uring = |dev| Opened {
        dev: Arc::new(dev),
        engine: Engine::Uring,
        note: None,
    };
    match (engine, probe) {
        (Engine::Sync, _) => sync(None),
        (Engine::Uring, Err(why)) => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("the io_uring I/O engine was asked for, but io_uring is unavailable: {why}"),
        )),
        (Engine::Uring, Ok(())) => Ok(uring(UringDev::open(path, writable, direct)?)),
        (Engine::Auto, Err(why)) => sync(Some(fallback_note(&why))),
        (Engine::Auto, Ok(())) => match UringDev::open(path, writable, direct) {
            Ok(dev) => Ok(uring(dev)),
            // Not the file's fault (FileDev opens it): the rings could not be set up.
            Err(e) => sync(Some(fallback_note(&e.to_string()))),
        },
    }
}

fn fallback_note(why: &str) -> String {
    format!("io_uring is unavailable ({why}); using pread/pwrite")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_names_round_trip() {
        for e in [Engine::Auto, Engine::Uring, Engine::Sync] {
            assert_eq!(e.to_string().parse::<Engine>(), Ok(e));
        }
        let err = "io_uring".parse::<Engine>().unwrap_err();
        assert!(err.contains("auto, uring or sync"), "{err}");
        assert_eq!(Engine::default(), Engine::Auto);
    }

    fn file() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        std::fs::write(&path, b"0123456789").unwrap();
        (dir, path)
    }

    fn off() -> Result<(), String> {
        Err("io_uring_setup: EPERM: kernel.io_uring_disabled = 2".into())
    }

    #[test]
    fn auto_falls_back_with_one_note_naming_the_reason() {
        let (_d, path) = file();
        let o = open_with_probe(&path, true, false, Engine::Auto, off()).unwrap();
        assert_eq!(o.engine, Engine::Sync);
        let note = o.note.unwrap();
        assert!(note.contains("io_uring is unavailable"), "{note}");
        assert!(note.contains("io_uring_disabled = 2"), "{note}");
        assert!(!note.contains('\n'));
        let mut b = [0u8; 4];
        o.dev.read_at(&mut b, 2).unwrap();
        assert_eq!(&b, b"2345");
    }

    #[test]
    fn uring_asked_for_but_unavailable_is_an_error() {
        let (_d, path) = file();
        let e = open_with_probe(&path, true, false, Engine::Uring, off())
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::Unsupported);
        assert!(e.to_string().contains("io_uring_disabled = 2"), "{e}");
    }

    #[test]
    fn sync_and_available_uring_say_nothing() {
        let (_d, path) = file();
        let o = open_with_probe(&path, false, false, Engine::Sync, Ok(())).unwrap();
        assert_eq!((o.engine, o.note), (Engine::Sync, None));
        if uring::available().is_ok() {
            for e in [Engine::Auto, Engine::Uring] {
                let o = open_with_probe(&path, false, false, e, Ok(())).unwrap();
                assert_eq!((o.engine, o.note), (Engine::Uring, None));
            }
        }
    }

    #[test]
    fn a_missing_file_is_the_file_error_whatever_the_engine() {
        let (_d, path) = file();
        let missing = path.with_file_name("missing");
        for e in [Engine::Auto, Engine::Uring, Engine::Sync] {
            for probe in [Ok(()), off()] {
                if e == Engine::Uring && probe.is_err() {
                    continue;
                }
                let err = open_with_probe(&missing, true, false, e, probe)
                    .err()
                    .unwrap();
                assert_eq!(err.kind(), io::ErrorKind::NotFound, "{e}");
            }
        }
    }
}
