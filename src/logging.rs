//! Logs: `tracing` events written to stderr by `tracing-subscriber`, as text or as one JSON
//! object per line (docs/design.md §7). The level comes from `RUST_LOG` when it is set
//! (`debug`, `thinpool::nbd=debug,warn`, ...), else from the command's default moved by
//! `-v` and `-q`. What a command answers (its output, its `thinpool: ...` error) is not a
//! log and is never filtered.
//!
//! Levels: `error` fail-stops and failed commits; `warn` what an operator should look at
//! (refused connections, accept errors, the io_uring fallback); `info` one line per server
//! start and stop and per NBD connection; `debug` one line per commit (duration, metadata
//! blocks written, data sync). Nothing is logged per request at any level but `trace`.

use std::io::IsTerminal;
use std::str::FromStr;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// How log lines look.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `TIME LEVEL target: message key=value...`
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `fields`...)
    Json,
}

const LEVELS: [LevelFilter; 6] = [
    LevelFilter::OFF,
    LevelFilter::ERROR,
    LevelFilter::WARN,
    LevelFilter::INFO,
    LevelFilter::DEBUG,
    LevelFilter::TRACE,
];

/// `default` moved up `verbose` steps and down `quiet` steps.
pub fn level(default: LevelFilter, verbose: u8, quiet: u8) -> LevelFilter {
    let at = LEVELS.iter().position(|l| *l == default).unwrap_or(2) as i64;
    let i = (at + verbose as i64 - quiet as i64).clamp(0, LEVELS.len() as i64 - 1);
    LEVELS[i as usize]
}

/// Install the process's log subscriber (once; later calls do nothing). A `RUST_LOG` that
/// does not parse is reported and the flags' level is used.
pub fn init(level: LevelFilter, format: LogFormat) {
    let mut note = None;
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => Targets::from_str(&v).unwrap_or_else(|e| {
            note = Some(format!(
                "RUST_LOG={v:?} is not a filter ({e}); using {level}"
            ));
            Targets::new().with_default(level)
        }),
        _ => Targets::new().with_default(level),
    };
    let ansi = std::io::stderr().is_terminal();
    let layer = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(layer.with_filter(filter))
        .try_init();
    if let Some(n) = note {
        tracing::warn!("{n}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_move_the_default_level_and_stop_at_the_ends() {
        assert_eq!(level(LevelFilter::WARN, 0, 0), LevelFilter::WARN);
        assert_eq!(level(LevelFilter::WARN, 1, 0), LevelFilter::INFO);
        assert_eq!(level(LevelFilter::WARN, 2, 0), LevelFilter::DEBUG);
        assert_eq!(level(LevelFilter::WARN, 9, 0), LevelFilter::TRACE);
        assert_eq!(level(LevelFilter::INFO, 0, 1), LevelFilter::WARN);
        assert_eq!(level(LevelFilter::WARN, 0, 2), LevelFilter::OFF);
        assert_eq!(level(LevelFilter::WARN, 0, 9), LevelFilter::OFF);
        assert_eq!(level(LevelFilter::WARN, 1, 1), LevelFilter::WARN);
    }
}
