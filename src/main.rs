//! The `spoolreplay` binary: everything lives in the library.

fn main() -> std::process::ExitCode {
    let exit = spoolreplay::run(std::env::args_os());
    std::process::ExitCode::from(exit.code())
}
