//! thinpool's JSON dump: a [`PoolDump`] as serde writes it, with what dm-thin's XML cannot
//! carry (names, sizes, read-only flags, origins, creation times). [`JsonWriter`] streams it
//! device by device and run by run; [`read_json`] reads a whole document (its memory grows
//! with the number of runs: for very large pools, prefer the XML).

use super::model::{DeviceDump, DumpError, DumpSink, PoolDump, Result, Run};
use std::io::{BufRead, Write};

/// Writes a dump as one JSON document: the superblock's fields, then `"devices"`, each
/// device's fields, then its `"mappings"`.
pub struct JsonWriter<W: Write> {
    out: W,
    what: String,
    /// Devices written so far, and runs of the current device (for the commas).
    devices: u64,
    runs: u64,
}

impl<W: Write> JsonWriter<W> {
    pub fn new(out: W, what: &str) -> JsonWriter<W> {
        JsonWriter {
            out,
            what: what.to_string(),
            devices: 0,
            runs: 0,
        }
    }

    fn io(&self, source: std::io::Error) -> DumpError {
        DumpError::Io {
            what: format!("cannot write {}", self.what),
            source,
        }
    }

    fn put(&mut self, s: &str) -> Result<()> {
        self.out.write_all(s.as_bytes()).map_err(|e| self.io(e))
    }

    /// `v` as JSON with its trailing empty list (`"devices":[]}` or `"mappings":[]}`) cut
    /// off, so the list's items can follow. Serde writes fields in declaration order, and the
    /// list is the last field of both types.
    fn open_list<T: serde::Serialize>(v: &T, list: &str) -> String {
        let s = serde_json::to_string(v).expect("a dump header serializes");
        let tail = format!("\"{list}\":[]}}");
        s.strip_suffix(&tail)
            .map(|head| format!("{head}\"{list}\":["))
            .expect("the list is the last field")
    }
}

impl<W: Write> DumpSink for JsonWriter<W> {
    fn superblock(&mut self, sb: &PoolDump) -> Result<()> {
        let head = Self::open_list(sb, "devices");
        self.put(&head)
    }

    fn device(&mut self, d: &DeviceDump) -> Result<()> {
        let sep = if self.devices > 0 { "," } else { "" };
        let head = format!("{sep}\n{}", Self::open_list(d, "mappings"));
        self.devices += 1;
        self.runs = 0;
        self.put(&head)
    }

    fn run(&mut self, r: &Run) -> Result<()> {
        let sep = if self.runs > 0 { "," } else { "" };
        self.runs += 1;
        let line = format!(
            "{sep}\n{}",
            serde_json::to_string(r).expect("a run serializes")
        );
        self.put(&line)
    }

    fn end_device(&mut self) -> Result<()> {
        self.put("]}")
    }

    fn end(&mut self) -> Result<()> {
        self.put("]}\n")?;
        self.out.flush().map_err(|e| self.io(e))
    }
}

/// Read a JSON dump from `input` (named `what` in errors) into `sink`.
pub fn read_json<R: BufRead>(input: R, what: &str, sink: &mut dyn DumpSink) -> Result<()> {
    let dump: PoolDump = serde_json::from_reader(input).map_err(|e| {
        if e.is_io() {
            DumpError::Io {
                what: format!("cannot read {what}"),
                source: e.into(),
            }
        } else {
            DumpError::input(format!("{what}: not a thinpool JSON dump: {e}"))
        }
    })?;
    dump.replay(sink).map_err(|e| match e {
        DumpError::Input(m) => DumpError::Input(format!("{what}: {m}")),
        e => e,
    })
}

#[cfg(test)]
mod tests {
    use super::super::model::Collect;
    use super::*;

    fn sample() -> PoolDump {
        let dev = |id, name: Option<&str>, runs: Vec<Run>| DeviceDump {
            dev_id: id,
            mapped_blocks: runs.iter().map(|r| r.length).sum(),
            transaction: 0,
            creation_time: 0,
            snap_time: 2,
            name: name.map(String::from),
            size: Some(1 << 20),
            read_only: id == 2,
            origin: (id == 2).then_some(1),
            created: Some(1_700_000_000),
            mappings: runs,
        };
        let run = |o, d, l, t| Run {
            origin_begin: o,
            data_begin: d,
            length: l,
            time: t,
        };
        PoolDump {
            uuid: "u\"1".into(),
            time: 2,
            transaction: 9,
            flags: 0,
            version: 2,
            data_block_size: 128,
            nr_data_blocks: 1000,
            devices: vec![
                dev(1, Some("vm disk"), vec![run(0, 10, 3, 0), run(7, 2, 1, 1)]),
                dev(2, None, vec![]),
                dev(3, Some("x"), vec![run(5, 5, 1, 2)]),
            ],
        }
    }

    #[test]
    fn the_streamed_json_is_the_serde_document_and_reads_back() {
        let d = sample();
        let mut w = JsonWriter::new(Vec::new(), "out");
        d.replay(&mut w).unwrap();
        let text = w.out;
        let parsed: PoolDump = serde_json::from_slice(&text).unwrap();
        assert_eq!(parsed, d);
        let mut c = Collect::default();
        read_json(&text[..], "out", &mut c).unwrap();
        assert_eq!(c.dump.unwrap(), d);
        // An empty pool too.
        let empty = PoolDump {
            devices: vec![],
            ..sample()
        };
        let mut w = JsonWriter::new(Vec::new(), "out");
        empty.replay(&mut w).unwrap();
        assert_eq!(serde_json::from_slice::<PoolDump>(&w.out).unwrap(), empty);
    }

    #[test]
    fn a_json_document_that_is_no_dump_is_refused() {
        for bad in ["", "{}", "[1]", r#"{"uuid":"","time":-1}"#, "{\"uuid\":"] {
            let e = read_json(bad.as_bytes(), "in.json", &mut Collect::default())
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("in.json: not a thinpool JSON dump"),
                "{bad}: {e}"
            );
        }
    }
}
