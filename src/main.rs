use std::process::ExitCode;

fn main() -> ExitCode {
    payhook::cli::main()
}
