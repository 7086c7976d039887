//! The `edgeloop` binary: the command line is the library's
//! [`edgeloop::cli`] (one file per command family under `src/cli/`).

fn main() -> std::process::ExitCode {
    edgeloop::cli::main()
}
