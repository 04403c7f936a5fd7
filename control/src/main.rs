//! `flynn`: the command line, the controller, and the all-in-one `flynn server`.

fn main() -> std::process::ExitCode {
    flynn_control::cli::main()
}
