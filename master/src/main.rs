fn main() {
    eprintln!(
        "drover-master {}: the master is not implemented yet (policies available: {})",
        env!("CARGO_PKG_VERSION"),
        drover_master::policy_names().join(", ")
    );
    std::process::exit(2);
}
