//! The CLI's progress bar (indicatif): drawn on stderr when both stdout and stderr are
//! terminals, never with `--json`, in pipes or inside a server; the library reports through
//! [`crate::progress::Progress`].

use super::Mode;
use crate::progress::Progress;
use std::io::{self, IsTerminal};

/// A progress bar on stderr, or nothing.
pub(super) struct Bar(Option<indicatif::ProgressBar>);

impl Bar {
    pub(super) fn new(mode: Mode, json: bool, msg: &str) -> Bar {
        Bar::styled(
            mode,
            json,
            msg,
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
    }

    /// A bar counting `unit`s (the checker's metadata blocks) instead of bytes.
    pub(super) fn counting(mode: Mode, json: bool, msg: &str, unit: &str) -> Bar {
        let template =
            format!("{{msg}} [{{bar:30}}] {{human_pos}}/{{human_len}} {unit} eta {{eta}}");
        Bar::styled(mode, json, msg, &template)
    }

    /// No bar.
    pub(super) fn hidden() -> Bar {
        Bar(None)
    }

    fn styled(mode: Mode, json: bool, msg: &str, template: &str) -> Bar {
        let show = mode == Mode::Local
            && !json
            && io::stdout().is_terminal()
            && io::stderr().is_terminal();
        Bar(show.then(|| {
            let pb = indicatif::ProgressBar::with_draw_target(
                None,
                indicatif::ProgressDrawTarget::stderr(),
            );
            if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
                pb.set_style(style.progress_chars("=> "));
            }
            pb.set_message(msg.to_string());
            pb
        }))
    }
    pub(super) fn finish(&self) {
        if let Some(pb) = &self.0 {
            pb.finish_and_clear();
        }
    }

    /// Run `f` (which prints) with the bar out of the way.
    pub(super) fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.0 {
            Some(pb) => pb.suspend(f),
            None => f(),
        }
    }
}

impl Progress for Bar {
    fn set_total(&self, total: u64) {
        if let Some(pb) = &self.0 {
            pb.set_length(total);
        }
    }
    fn inc(&self, n: u64) {
        if let Some(pb) = &self.0 {
            pb.inc(n);
        }
    }
}
