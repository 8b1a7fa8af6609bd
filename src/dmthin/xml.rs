//! thin_dump's XML: written by [`XmlWriter`], read by [`read_xml`], both streaming.
//!
//! ```text
//! <superblock uuid="" time="1" transaction="3" flags="0" version="2" data_block_size="128" nr_data_blocks="100">
//!   <device dev_id="0" mapped_blocks="5" transaction="0" creation_time="0" snap_time="1">
//!     <range_mapping origin_begin="0" data_begin="0" length="4" time="0"/>
//!     <single_mapping origin_block="10" data_block="7" time="1"/>
//!   </device>
//! </superblock>
//! ```
//! The layout is thin_dump's (thin-provisioning-tools 0.9 writes exactly this); docs/dmthin.md
//! lists what each attribute means to thinpool.

use super::model::{DeviceDump, DumpError, DumpSink, PoolDump, Result, Run};
use quick_xml::events::{BytesStart, Event};
use std::io::{BufRead, Write};

/// Writes a dump as thin_dump's XML to `out`.
pub struct XmlWriter<W: Write> {
    out: W,
    /// The output's name, for errors.
    what: String,
}

impl<W: Write> XmlWriter<W> {
    pub fn new(out: W, what: &str) -> XmlWriter<W> {
        XmlWriter {
            out,
            what: what.to_string(),
        }
    }

    fn io(&self, source: std::io::Error) -> DumpError {
        DumpError::Io {
            what: format!("cannot write {}", self.what),
            source,
        }
    }

    /// The output, flushed.
    pub fn into_inner(mut self) -> Result<W> {
        self.out.flush().map_err(|e| self.io(e))?;
        Ok(self.out)
    }
}

impl<W: Write> DumpSink for XmlWriter<W> {
    fn superblock(&mut self, sb: &PoolDump) -> Result<()> {
        writeln!(
            self.out,
            r#"<superblock uuid="{}" time="{}" transaction="{}" flags="{}" version="{}" data_block_size="{}" nr_data_blocks="{}">"#,
            quick_xml::escape::escape(sb.uuid.as_str()),
            sb.time,
            sb.transaction,
            sb.flags,
            sb.version,
            sb.data_block_size,
            sb.nr_data_blocks
        )
        .map_err(|e| self.io(e))
    }

    fn device(&mut self, d: &DeviceDump) -> Result<()> {
        writeln!(
            self.out,
            r#"  <device dev_id="{}" mapped_blocks="{}" transaction="{}" creation_time="{}" snap_time="{}">"#,
            d.dev_id, d.mapped_blocks, d.transaction, d.creation_time, d.snap_time
        )
        .map_err(|e| self.io(e))
    }

    fn run(&mut self, r: &Run) -> Result<()> {
        if r.length == 1 {
            writeln!(
                self.out,
                r#"    <single_mapping origin_block="{}" data_block="{}" time="{}"/>"#,
                r.origin_begin, r.data_begin, r.time
            )
        } else {
            writeln!(
                self.out,
                r#"    <range_mapping origin_begin="{}" data_begin="{}" length="{}" time="{}"/>"#,
                r.origin_begin, r.data_begin, r.length, r.time
            )
        }
        .map_err(|e| self.io(e))
    }

    fn end_device(&mut self) -> Result<()> {
        writeln!(self.out, "  </device>").map_err(|e| self.io(e))
    }

    fn end(&mut self) -> Result<()> {
        writeln!(self.out, "</superblock>").map_err(|e| self.io(e))?;
        self.out.flush().map_err(|e| self.io(e))
    }
}

/// Where the reader is in the document.
#[derive(PartialEq, Eq)]
enum State {
    Start,
    Superblock,
    Device,
    /// Inside a mapping element written as a start tag (`<range_mapping ...></range_mapping>`).
    Mapping,
    Done,
}

/// Read thin_dump XML from `input` (named `what` in errors) into `sink`. Elements other than
/// thin_dump's four, and text other than white space, are errors; unknown attributes are
/// ignored (newer thin_dump versions add some).
pub fn read_xml<R: BufRead>(input: R, what: &str, sink: &mut dyn DumpSink) -> Result<()> {
    let mut reader = quick_xml::Reader::from_reader(input);
    let mut buf = Vec::new();
    let mut state = State::Start;
    loop {
        buf.clear();
        let at = reader.buffer_position();
        let ev = reader.read_event_into(&mut buf).map_err(|e| match e {
            quick_xml::Error::Io(source) => DumpError::Io {
                what: format!("cannot read {what}"),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            e => DumpError::input(format!(
                "{what}: not well-formed XML at byte {}: {e}",
                reader.error_position()
            )),
        })?;
        let place = |e: DumpError| match e {
            DumpError::Input(m) => DumpError::Input(format!("{what}, at byte {at}: {m}")),
            e => e,
        };
        match ev {
            Event::Start(e) => {
                let empty = false;
                state = element(&e, empty, state, sink).map_err(place)?;
            }
            Event::Empty(e) => {
                state = element(&e, true, state, sink).map_err(place)?;
            }
            Event::End(e) => {
                let name = e.name();
                state = match (state, name.as_ref()) {
                    (State::Mapping, "range_mapping" | "single_mapping") => State::Device,
                    (State::Device, "device") => {
                        sink.end_device().map_err(place)?;
                        State::Superblock
                    }
                    (State::Superblock, "superblock") => {
                        sink.end().map_err(place)?;
                        State::Done
                    }
                    _ => {
                        return Err(place(DumpError::input(format!(
                            "unexpected </{}>",
                            name.as_ref()
                        ))))
                    }
                };
            }
            Event::Text(t) => {
                if !t.trim().is_empty() {
                    return Err(place(DumpError::input("unexpected text between elements")));
                }
            }
            Event::CData(_) | Event::GeneralRef(_) => {
                return Err(place(DumpError::input("unexpected text between elements")));
            }
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
            Event::Eof => {
                if state != State::Done {
                    return Err(DumpError::input(format!(
                        "{what} ends before </superblock> (truncated?)"
                    )));
                }
                return Ok(());
            }
        }
    }
}

/// One start or empty-element tag.
fn element(e: &BytesStart, empty: bool, state: State, sink: &mut dyn DumpSink) -> Result<State> {
    let name = e.name();
    match (state, name.as_ref()) {
        (State::Start, "superblock") => {
            let mut a = Attrs::read(e)?;
            sink.superblock(&PoolDump {
                uuid: a.text("uuid")?.unwrap_or_default(),
                time: a.num("time")?,
                transaction: a.num("transaction")?,
                flags: a.num("flags")?,
                version: a.num("version")?,
                data_block_size: a.num("data_block_size")?,
                nr_data_blocks: a.num("nr_data_blocks")?,
                devices: Vec::new(),
            })?;
            if empty {
                sink.end()?;
                return Ok(State::Done);
            }
            Ok(State::Superblock)
        }
        (State::Superblock, "device") => {
            let mut a = Attrs::read(e)?;
            sink.device(&DeviceDump::dm(
                a.num("dev_id")?,
                a.num("mapped_blocks")?,
                a.num("transaction")?,
                a.num("creation_time")?,
                a.num("snap_time")?,
            ))?;
            if empty {
                sink.end_device()?;
                return Ok(State::Superblock);
            }
            Ok(State::Device)
        }
        (State::Device, "range_mapping") => {
            let mut a = Attrs::read(e)?;
            sink.run(&Run {
                origin_begin: a.num("origin_begin")?,
                data_begin: a.num("data_begin")?,
                length: a.num("length")?,
                time: a.num("time")?,
            })?;
            Ok(if empty { State::Device } else { State::Mapping })
        }
        (State::Device, "single_mapping") => {
            let mut a = Attrs::read(e)?;
            sink.run(&Run {
                origin_begin: a.num("origin_block")?,
                data_begin: a.num("data_block")?,
                length: 1,
                time: a.num("time")?,
            })?;
            Ok(if empty { State::Device } else { State::Mapping })
        }
        (state, n) => {
            let known = ["superblock", "device", "range_mapping", "single_mapping"];
            Err(DumpError::input(if known.contains(&n) {
                let inside = match state {
                    State::Start => "before <superblock>",
                    State::Superblock => "directly inside <superblock>",
                    State::Device => "inside <device>",
                    State::Mapping => "inside a mapping",
                    State::Done => "after </superblock>",
                };
                format!("<{n}> cannot appear {inside}")
            } else {
                format!(
                    "unknown element <{n}>: thinpool reads thin_dump's XML (superblock, device, \
                     range_mapping, single_mapping; not the shared-subtree <def>/<ref> form)"
                )
            }))
        }
    }
}

/// The attributes of one element, looked up by name (elements have at most seven). Numbers
/// are parsed from the raw values, without copies: a restore reads millions of mappings.
struct Attrs<'a> {
    element: &'a str,
    list: Vec<quick_xml::events::attributes::Attribute<'a>>,
}

impl<'a> Attrs<'a> {
    fn read(e: &'a BytesStart) -> Result<Attrs<'a>> {
        let element = e.name().into_inner();
        let mut list = Vec::with_capacity(8);
        // Duplicate names are not looked for (the first one wins): the check is a quadratic
        // scan per element, and thin_dump never writes one.
        for a in e.attributes().with_checks(false) {
            list.push(a.map_err(|err| DumpError::input(format!("<{element}>: {err}")))?);
        }
        Ok(Attrs { element, list })
    }

    fn find(&self, name: &str) -> Option<&quick_xml::events::attributes::Attribute<'a>> {
        self.list.iter().find(|a| a.key.as_ref() == name)
    }

    fn text(&mut self, name: &str) -> Result<Option<String>> {
        let Some(a) = self.find(name) else {
            return Ok(None);
        };
        let v = a
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map_err(|err| DumpError::input(format!("<{}> {name}: {err}", self.element)))?;
        Ok(Some(v.into_owned()))
    }

    fn num<T: std::str::FromStr>(&mut self, name: &str) -> Result<T> {
        let element = self.element;
        let a = self
            .find(name)
            .ok_or_else(|| DumpError::input(format!("<{element}> has no {name} attribute")))?;
        a.value.trim().parse().ok().ok_or_else(|| {
            DumpError::input(format!(
                "<{element}> {name}=\"{}\" is not a number in range ({} bits at most)",
                a.value,
                8 * std::mem::size_of::<T>()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::Collect;
    use super::*;

    const SAMPLE: &str = r#"<?xml version="1.0"?>
<!-- written by hand -->
<superblock uuid="" time="1" transaction="3" flags="0" version="2" data_block_size="128" nr_data_blocks="100">
  <device dev_id="0" mapped_blocks="5" transaction="0" creation_time="0" snap_time="1">
    <range_mapping origin_begin="0" data_begin="0" length="4" time="0"/>
    <single_mapping origin_block="10" data_block="7" time="1"></single_mapping>
  </device>
  <device dev_id="1" mapped_blocks="0" transaction="0" creation_time="1" snap_time="1"/>
</superblock>
"#;

    fn parse(s: &str) -> Result<PoolDump> {
        let mut c = Collect::default();
        read_xml(s.as_bytes(), "sample.xml", &mut c)?;
        Ok(c.dump.expect("a superblock"))
    }

    #[test]
    fn thin_dump_xml_reads_and_writes_back_the_same() {
        let d = parse(SAMPLE).unwrap();
        assert_eq!(
            (d.time, d.transaction, d.data_block_size, d.nr_data_blocks),
            (1, 3, 128, 100)
        );
        assert_eq!(d.devices.len(), 2);
        let runs: Vec<_> = d.devices[0]
            .mappings
            .iter()
            .map(|r| (r.origin_begin, r.data_begin, r.length, r.time))
            .collect();
        assert_eq!(runs, vec![(0, 0, 4, 0), (10, 7, 1, 1)]);
        assert!(d.devices[1].mappings.is_empty());
        let mut w = XmlWriter::new(Vec::new(), "out");
        d.replay(&mut w).unwrap();
        let text = String::from_utf8(w.into_inner().unwrap()).unwrap();
        assert!(text.contains(r#"    <single_mapping origin_block="10" data_block="7" time="1"/>"#));
        assert_eq!(parse(&text).unwrap(), d);
    }

    #[test]
    fn malformed_and_foreign_xml_is_refused_with_its_place() {
        let cases = [
            (SAMPLE.replace("</superblock>", ""), "truncated"),
            (SAMPLE.replace(r#" length="4""#, ""), "no length attribute"),
            (
                SAMPLE.replace(r#"length="4""#, r#"length="x""#),
                "not a number",
            ),
            (
                SAMPLE.replace(r#"time="0"/>"#, r#"time="-1"/>"#),
                "not a number",
            ),
            (
                SAMPLE.replace("<device dev_id=\"1\"", "<def dev_id=\"1\""),
                "unknown element <def>",
            ),
            (
                SAMPLE.replace("  </device>", "  </superblock>"),
                "expected `</device>`",
            ),
            (
                SAMPLE.replace("</superblock>", "</superblock><superblock>"),
                "after </superblock>",
            ),
            (
                SAMPLE.replace("<!-- written", "stray <!-- written"),
                "unexpected text",
            ),
            (SAMPLE.replace("data_begin=\"0\"", "data_begin=\"0"), "byte"),
        ];
        for (text, want) in cases {
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.contains(want), "{want:?} not in {e:?}");
            assert!(e.contains("sample.xml"), "{e}");
        }
    }
}
