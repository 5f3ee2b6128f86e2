fn main() -> std::process::ExitCode {
    imgspec::cli::main()
}
