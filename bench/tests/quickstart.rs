//! The README's quick start, run as written: every `drover` line of its
//! "Try it" block, in order, against a fresh `drover dev`, from the
//! repository root. A command that stops working, or a README line that
//! drifts from the CLI, fails here.

use std::path::Path;
use std::process::Command;

use drover_bench::{drover_binary, DevCluster};

/// The `drover ...` commands of the README's "### Try it" block, without
/// their trailing comments.
fn quick_start_commands(readme: &str) -> Vec<Vec<String>> {
    let section = readme
        .split("### Try it")
        .nth(1)
        .expect("the README has a \"### Try it\" section");
    let block = section
        .split("```sh")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a sh code block in \"Try it\"");
    block
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| l.starts_with("drover "))
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

#[test]
fn every_command_of_the_readme_quick_start_succeeds_against_drover_dev() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let commands = quick_start_commands(&readme);
    assert!(commands.len() >= 8, "{commands:?}");
    let drover = drover_binary().unwrap();
    let cluster = DevCluster::start(&drover, 1).unwrap();
    let mut outputs = Vec::new();
    for argv in &commands {
        let out = Command::new(&drover)
            .args(&argv[1..])
            .current_dir(&root)
            .env("DROVER_ADDR", &cluster.addr)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "`{}` failed ({}):\n{stdout}\n{}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        outputs.push(stdout);
    }
    // What the README's comments promise for the first two.
    assert!(
        outputs[0].contains("job hello complete: 2 succeeded"),
        "{}",
        outputs[0]
    );
    assert!(
        outputs[1].starts_with("hello from hello/1 on "),
        "{}",
        outputs[1]
    );
}
