//! Findings of a check, for humans and for `--json`.

use crate::meta::txn::OpenReport;
use crate::meta::MetaBlock;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
    Info,
}

#[derive(Debug, Clone)]
pub struct Finding {
    pub severity: Severity,
    /// What was checked: `journal`, `node`, `mapping`, `details`, `space map`, `leak`, `refcount`.
    pub kind: &'static str,
    pub block: Option<MetaBlock>,
    /// Where: volume, tree and key range.
    pub location: String,
    pub message: String,
}

#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub seq: u64,
    pub valid_slots: u64,
    pub nodes: u64,
    pub mappings: u64,
    pub volumes: u64,
    pub metadata_blocks_used: u64,
    pub data_blocks_used: u64,
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub stats: Stats,
}

impl Report {
    fn push(
        &mut self,
        severity: Severity,
        kind: &'static str,
        block: Option<MetaBlock>,
        location: &str,
        message: String,
    ) {
        self.findings.push(Finding {
            severity,
            kind,
            block,
            location: location.to_string(),
            message,
        });
    }
    pub fn error(
        &mut self,
        kind: &'static str,
        block: Option<MetaBlock>,
        location: &str,
        message: impl Into<String>,
    ) {
        self.push(Severity::Error, kind, block, location, message.into())
    }
    pub fn warning(
        &mut self,
        kind: &'static str,
        block: Option<MetaBlock>,
        location: &str,
        message: impl Into<String>,
    ) {
        self.push(Severity::Warning, kind, block, location, message.into())
    }
    pub fn info(&mut self, kind: &'static str, location: &str, message: impl Into<String>) {
        self.push(Severity::Info, kind, None, location, message.into())
    }
    pub fn errors(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
    }
    pub fn is_clean(&self) -> bool {
        self.errors().next().is_none()
    }

    pub fn to_json(&self) -> serde_json::Value {
        let f: Vec<_> = self
            .findings
            .iter()
            .map(|f| {
                serde_json::json!({
                    "severity": match f.severity { Severity::Error => "error", Severity::Warning => "warning", Severity::Info => "info" },
                    "kind": f.kind,
                    "block": f.block.map(|b| b.0),
                    "location": f.location,
                    "message": f.message,
                })
            })
            .collect();
        let s = &self.stats;
        serde_json::json!({
            "clean": self.is_clean(),
            "seq": s.seq,
            "valid_slots": s.valid_slots,
            "nodes": s.nodes,
            "mappings": s.mappings,
            "volumes": s.volumes,
            "metadata_blocks_used": s.metadata_blocks_used,
            "data_blocks_used": s.data_blocks_used,
            "findings": f,
        })
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        };
        write!(f, "{sev}: [{}]", self.kind)?;
        if let Some(b) = self.block {
            write!(f, " {b}")?;
        }
        if !self.location.is_empty() {
            write!(f, " ({})", self.location)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Findings about the journal: which slots are valid, which record was chosen, gaps and
/// conflicting duplicates.
pub(crate) fn journal_findings(rep: &mut Report, open: &OpenReport) {
    let mut seqs: Vec<(u64, u32, u8)> = Vec::new();
    for s in &open.slots {
        match &s.result {
            Ok(r) => seqs.push((r.seq, s.slot, s.ring)),
            Err(e) if e == "empty" => {}
            Err(e) => rep.warning(
                "journal",
                Some(s.block),
                &format!("ring {} slot {}", s.ring, s.slot),
                format!("invalid record: {e}"),
            ),
        }
    }
    rep.stats.valid_slots = seqs.len() as u64;
    rep.stats.seq = open.chosen_seq;
    // The same seq in both rings must be the same record.
    let mut by_seq: std::collections::BTreeMap<u64, Vec<&crate::meta::journal::Record>> =
        Default::default();
    for s in &open.slots {
        if let Ok(r) = &s.result {
            by_seq.entry(r.seq).or_default().push(r);
        }
    }
    for (seq, rs) in &by_seq {
        if rs.windows(2).any(|w| w[0] != w[1]) {
            rep.error(
                "journal",
                None,
                &format!("seq {seq}"),
                "the two rings hold different records for the same seq",
            );
        }
        if rs.len() == 1 && *seq + 1 < open.newest_valid_seq.max(1) {
            // One ring lost an old copy: harmless but worth knowing.
            rep.info(
                "journal",
                &format!("seq {seq}"),
                "only one ring holds this record",
            );
        }
    }
    let valid: Vec<u64> = by_seq.keys().copied().collect();
    for w in valid.windows(2) {
        if w[1] != w[0] + 1 {
            rep.info(
                "journal",
                "",
                format!("gap in the journal: seq {} then {}", w[0], w[1]),
            );
        }
    }
    if let Some(r) = open.rewound() {
        // A valid record whose trees fail verification is damage to an acknowledged
        // commit: the pool opens read-write only with --rewind.
        rep.error(
            "journal",
            None,
            &format!("seq {}", r.newest),
            format!(
                "{r}: the pool opens read-write only with --rewind, which loses what seq {} \
                 acknowledged",
                r.newest
            ),
        );
    }
}
