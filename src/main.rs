//! The `thinpool` binary: everything lives in [`thinpool::cli`].

fn main() -> std::process::ExitCode {
    thinpool::cli::main()
}
