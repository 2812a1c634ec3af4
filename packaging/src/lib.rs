//! Helpers for the deployment checks in `tests/`: the systemd units and the
//! sysusers file in `systemd/`, the binaries' sd_notify messages, and the
//! Debian package built by `scripts/build-deb.sh`.
//!
//! The checks run the real system tools (`systemd-analyze`,
//! `systemd-sysusers`, `dpkg-deb`). A missing tool fails the test with a
//! hint, never skips it: `scripts/setup.sh --tests` installs them, and CI runs it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("packaging/ is inside the repository")
        .to_path_buf()
}

/// The directory holding the workspace's binaries for the profile the tests
/// were built with: the test executable is `<target>/<profile>/deps/<test>`.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    exe.parent()
        .and_then(Path::parent)
        .expect("the test executable is in <target>/<profile>/deps")
        .to_path_buf()
}

/// A workspace binary (`drover-master`, `drover-agent`), which must be built.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} not found: build the binaries first with `cargo build --workspace --bins`",
        path.display()
    );
    path
}

/// Runs `cmd`, failing the test if the program cannot be started (not
/// installed) with a hint to run `scripts/setup.sh --tests`. The caller checks the
/// exit status: some checks expect a failure.
pub fn run(cmd: &mut Command) -> Output {
    let program = cmd.get_program().to_string_lossy().into_owned();
    match cmd.output() {
        Ok(out) => out,
        Err(e) => panic!(
            "could not run {program}: {e}. It is installed by scripts/setup.sh --tests \
             (Debian packages systemd and dpkg); run that first"
        ),
    }
}

/// Runs `cmd` and returns its stdout; fails the test, showing both streams,
/// unless it exits 0.
pub fn run_ok(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{shown} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// A unit file's settings: section name -> (key -> every value, in order).
/// Comments and blank lines are skipped; continuation lines are not used in
/// our units and are not supported.
pub type UnitFile = BTreeMap<String, BTreeMap<String, Vec<String>>>;

/// Parses a systemd unit file (see [`UnitFile`]).
pub fn parse_unit(text: &str) -> UnitFile {
    let mut unit = UnitFile::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        assert!(
            !line.ends_with('\\'),
            "continuation lines are not supported: {line}"
        );
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not a key=value line: {line}"));
        unit.entry(section.clone())
            .or_default()
            .entry(key.trim().to_string())
            .or_default()
            .push(value.trim().to_string());
    }
    unit
}

/// The last value of `key` in `section` (systemd's rule for single-valued
/// settings), if set.
pub fn setting<'a>(unit: &'a UnitFile, section: &str, key: &str) -> Option<&'a str> {
    unit.get(section)?.get(key)?.last().map(String::as_str)
}

/// The variables a command line expands: `$NAME` and `${NAME}`.
pub fn expanded_variables(command: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = command;
    while let Some(at) = rest.find('$') {
        rest = &rest[at + 1..];
        let braced = rest.starts_with('{');
        let start = usize::from(braced);
        let len = rest[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len() - start);
        if len > 0 {
            names.push(rest[start..start + len].to_string());
        }
        rest = &rest[start + len..];
    }
    names
}

/// The "Overall exposure level" that `systemd-analyze security` printed.
pub fn exposure_level(report: &str) -> Option<f64> {
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))?;
    let (_, after) = line.rsplit_once(':')?;
    after.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sections_and_repeated_keys() {
        let unit = parse_unit(
            "# comment\n[Unit]\nDescription=x\n\n[Service]\n; other comment\n\
             SystemCallFilter=@system-service\nSystemCallFilter=~@privileged\nType = notify\n",
        );
        assert_eq!(setting(&unit, "Unit", "Description"), Some("x"));
        assert_eq!(setting(&unit, "Service", "Type"), Some("notify"));
        assert_eq!(
            unit["Service"]["SystemCallFilter"],
            vec!["@system-service", "~@privileged"]
        );
        assert_eq!(setting(&unit, "Service", "User"), None);
    }

    #[test]
    fn finds_expanded_variables() {
        assert_eq!(
            expanded_variables("/usr/bin/x --config ${A_B} $C_D --flag $"),
            vec!["A_B", "C_D"]
        );
        assert!(expanded_variables("/usr/bin/x --config /etc/x").is_empty());
    }

    #[test]
    fn reads_the_exposure_level() {
        let report = "  NAME  DESCRIPTION\n✓ X= y\n\n\
             → Overall exposure level for drover-master.service: 1.2 OK 🙂\n";
        assert_eq!(exposure_level(report), Some(1.2));
        assert_eq!(exposure_level("nothing"), None);
    }
}
