//! The `rbd` command line tool, run as a child process: what `thinpool sync` asks of a Ceph
//! cluster. Every call names one image (`POOL/IMAGE`); errors carry rbd's own message.

use super::{Result, SyncError};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::io::Read;
use std::os::unix::io::RawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// `rbd` exits with the errno of what failed: 2 is ENOENT (no such image, key...).
const ENOENT_EXIT: i32 = 2;

/// An RBD image named `pool/image` (rbd's own spelling, written `rbd:pool/image` on
/// thinpool's command line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    pub pool: String,
    pub image: String,
}

impl ImageSpec {
    /// Parse `rbd:POOL/IMAGE`.
    pub fn parse(s: &str) -> Result<ImageSpec> {
        let bad = |why: &str| SyncError::BadSpec {
            spec: s.to_string(),
            why: why.to_string(),
        };
        let rest = s
            .strip_prefix("rbd:")
            .ok_or_else(|| bad("it must start with 'rbd:'"))?;
        let (pool, image) = rest
            .split_once('/')
            .ok_or_else(|| bad("it must be rbd:POOL/IMAGE"))?;
        for (what, v) in [("pool", pool), ("image", image)] {
            if v.is_empty() {
                return Err(bad(&format!("the {what} name is empty")));
            }
            if let Some(c) = v
                .chars()
                .find(|c| matches!(c, '/' | '@') || c.is_control() || c.is_whitespace())
            {
                return Err(bad(&format!(
                    "the {what} name holds {c:?} (no '/', '@', spaces or control characters)"
                )));
            }
        }
        Ok(ImageSpec {
            pool: pool.to_string(),
            image: image.to_string(),
        })
    }

    /// The same pool, another image name.
    pub fn sibling(&self, image: String) -> ImageSpec {
        ImageSpec {
            pool: self.pool.clone(),
            image,
        }
    }
}

impl fmt::Display for ImageSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.pool, self.image)
    }
}

/// One snapshot of an image, as `rbd snap ls --format json` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct RbdSnap {
    /// Ceph's snapshot id: later snapshots have larger ids.
    pub id: u64,
    pub name: String,
    pub size: u64,
}

/// How to reach the cluster: the `rbd` binary and, optionally, a ceph.conf.
#[derive(Debug, Clone)]
pub struct Rbd {
    pub bin: OsString,
    pub conf: Option<PathBuf>,
    /// Descriptors every `rbd` child inherits: the pool's locks ([`Pool::lock_fds`]), so
    /// the pool stays locked until the last child of a killed sync has exited.
    ///
    /// [`Pool::lock_fds`]: crate::pool::Pool::lock_fds
    pub inherit: Vec<RawFd>,
}

impl Default for Rbd {
    fn default() -> Rbd {
        Rbd {
            bin: "rbd".into(),
            conf: None,
            inherit: Vec::new(),
        }
    }
}

impl Rbd {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        if let Some(conf) = &self.conf {
            c.arg("--conf").arg(conf);
        }
        c.args(args).stdin(Stdio::null());
        // A killed sync's rbd finishes what it was doing, and the pool stays locked (the
        // repeated sync waits) until it has.
        crate::io::sys::inherit_fds(&mut c, self.inherit.clone());
        c
    }

    fn failed(&self, args: &[&str], code: Option<i32>, stderr: &[u8]) -> SyncError {
        SyncError::Rbd {
            command: format!("rbd {}", args.join(" ")),
            status: code.map_or_else(|| "killed by a signal".into(), |c| format!("exit {c}")),
            stderr: String::from_utf8_lossy(stderr).trim().to_string(),
        }
    }

    fn spawn_err(&self, e: std::io::Error) -> SyncError {
        SyncError::Spawn {
            bin: self.bin.to_string_lossy().into_owned(),
            source: e,
        }
    }

    /// Run to completion; stdout on success, `Ok(None)` when rbd said ENOENT.
    fn run(&self, args: &[&str]) -> Result<Option<Vec<u8>>> {
        let out = self.command(args).output().map_err(|e| self.spawn_err(e))?;
        match out.status.code() {
            Some(0) => Ok(Some(out.stdout)),
            Some(ENOENT_EXIT) => Ok(None),
            code => Err(self.failed(args, code, &out.stderr)),
        }
    }

    /// Run to completion; an ENOENT is an error too.
    fn run_ok(&self, args: &[&str]) -> Result<Vec<u8>> {
        let out = self.command(args).output().map_err(|e| self.spawn_err(e))?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        Err(self.failed(args, out.status.code(), &out.stderr))
    }

    fn json<T: serde::de::DeserializeOwned>(args: &[&str], out: &[u8]) -> Result<T> {
        let text = String::from_utf8_lossy(out);
        // `image-meta list` prints nothing at all for an image without metadata.
        let text = if text.trim().is_empty() { "{}" } else { &text };
        serde_json::from_str(text).map_err(|e| SyncError::RbdOutput {
            command: format!("rbd {}", args.join(" ")),
            why: e.to_string(),
        })
    }

    /// The names `rbd ls` lists in `pool` (the pool's directory). An `rbd rm` killed
    /// half-way can leave a name listed that no longer opens, or listed twice.
    pub fn list(&self, pool: &str) -> Result<Vec<String>> {
        let args = ["ls", "--format", "json", pool];
        Self::json(&args, &self.run_ok(&args)?)
    }

    /// The image's snapshots, oldest first; `None` when there is no such image.
    pub fn snaps(&self, img: &ImageSpec) -> Result<Option<Vec<RbdSnap>>> {
        let s = img.to_string();
        let args = ["snap", "ls", "--format", "json", &s];
        let Some(out) = self.run(&args)? else {
            return Ok(None);
        };
        let mut v: Vec<RbdSnap> = Self::json(&args, &out)?;
        v.sort_by_key(|x| x.id);
        Ok(Some(v))
    }

    /// The image's key/value metadata (`rbd image-meta`); `None` when there is no such
    /// image. One call answers both, so an image cannot vanish between the two questions.
    pub fn meta(&self, img: &ImageSpec) -> Result<Option<BTreeMap<String, String>>> {
        let s = img.to_string();
        let args = ["image-meta", "list", "--format", "json", &s];
        match self.run(&args)? {
            None => Ok(None),
            Some(out) => Self::json(&args, &out).map(Some),
        }
    }

    pub fn meta_set(&self, img: &ImageSpec, key: &str, value: &str) -> Result<()> {
        let s = img.to_string();
        self.run_ok(&["image-meta", "set", &s, key, value])
            .map(drop)
    }

    /// Remove a key; a key that is not there is no error.
    pub fn meta_remove(&self, img: &ImageSpec, key: &str) -> Result<()> {
        let s = img.to_string();
        self.run(&["image-meta", "remove", &s, key]).map(drop)
    }

    /// Create an image of at least `size` bytes (whole MiB; a diff's size record then sets
    /// the exact size).
    pub fn create(&self, img: &ImageSpec, size: u64) -> Result<()> {
        let s = img.to_string();
        let mib = size.div_ceil(1 << 20).max(1).to_string() + "M";
        self.run_ok(&["create", "--size", &mib, &s]).map(drop)
    }

    pub fn rename(&self, from: &ImageSpec, to: &ImageSpec) -> Result<()> {
        let (f, t) = (from.to_string(), to.to_string());
        self.run_ok(&["rename", &f, &t]).map(drop)
    }

    /// Remove an image that has no snapshots; one that is not there is no error.
    pub fn remove(&self, img: &ImageSpec) -> Result<()> {
        let s = img.to_string();
        self.run(&["rm", "--no-progress", &s]).map(drop)
    }

    /// Roll the image's head back to snapshot `snap`.
    pub fn rollback(&self, img: &ImageSpec, snap: &str) -> Result<()> {
        let s = format!("{img}@{snap}");
        self.run_ok(&["snap", "rollback", "--no-progress", &s])
            .map(drop)
    }

    /// `rbd import-diff - IMAGE`, reading the stream from the returned child's stdin.
    pub fn import_diff(&self, img: &ImageSpec) -> Result<Running> {
        let s = img.to_string();
        let args = vec!["import-diff".into(), "--no-progress".into(), "-".into(), s];
        self.start(args, true)
    }

    /// `rbd export-diff [--from-snap FROM] IMAGE@SNAP -`, the stream on the child's stdout.
    pub fn export_diff(&self, img: &ImageSpec, from: Option<&str>, snap: &str) -> Result<Running> {
        let mut args: Vec<String> = vec!["export-diff".into(), "--no-progress".into()];
        if let Some(f) = from {
            args.extend(["--from-snap".into(), f.to_string()]);
        }
        args.extend([format!("{img}@{snap}"), "-".into()]);
        self.start(args, false)
    }

    fn start(&self, args: Vec<String>, feed: bool) -> Result<Running> {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut c = self.command(&refs);
        if feed {
            c.stdin(Stdio::piped()).stdout(Stdio::null());
        } else {
            c.stdout(Stdio::piped());
        }
        c.stderr(Stdio::piped());
        let child = c.spawn().map_err(|e| self.spawn_err(e))?;
        Ok(Running {
            child,
            rbd: self.clone(),
            args,
        })
    }
}

/// A streaming `rbd` child process.
pub struct Running {
    pub child: Child,
    rbd: Rbd,
    args: Vec<String>,
}

impl Running {
    /// Wait for it; its stderr becomes the error on failure.
    pub fn finish(mut self) -> Result<()> {
        drop(self.child.stdin.take());
        drop(self.child.stdout.take());
        let mut err = Vec::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_end(&mut err);
        }
        let st = self.child.wait().map_err(|e| self.rbd.spawn_err(e))?;
        if st.success() {
            return Ok(());
        }
        let refs: Vec<&str> = self.args.iter().map(String::as_str).collect();
        Err(self.rbd.failed(&refs, st.code(), &err))
    }

    /// Stop it (the stream failed on thinpool's side).
    pub fn abandon(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_specs_parse_and_bad_ones_say_why() {
        let s = ImageSpec::parse("rbd:rbd/vm1").unwrap();
        assert_eq!((s.pool.as_str(), s.image.as_str()), ("rbd", "vm1"));
        assert_eq!(s.to_string(), "rbd/vm1");
        for (bad, why) in [
            ("rbd/vm1", "start with 'rbd:'"),
            ("rbd:vm1", "rbd:POOL/IMAGE"),
            ("rbd:/vm1", "pool name is empty"),
            ("rbd:rbd/", "image name is empty"),
            ("rbd:rbd/a/b", "'/'"),
            ("rbd:rbd/a@s", "'@'"),
            ("rbd:rbd/a b", "' '"),
        ] {
            let e = ImageSpec::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
