//! The task supervisor the agent starts for each alloc: see `drover_agent::shim`.
fn main() {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    std::process::exit(drover_agent::shim::main(argv));
}
