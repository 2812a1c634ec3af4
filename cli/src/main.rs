fn main() {
    eprintln!(
        "drover {}: the CLI is not implemented yet (master policies: {}; agent protocol v{})",
        env!("CARGO_PKG_VERSION"),
        drover_master::policy_names().join(", "),
        drover_agent::protocol_version()
    );
    std::process::exit(2);
}
