fn main() {
    eprintln!(
        "drover-agent {} (protocol v{}): the agent is not implemented yet",
        env!("CARGO_PKG_VERSION"),
        drover_agent::protocol_version()
    );
    std::process::exit(2);
}
