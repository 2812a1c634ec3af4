//! The Debian package, as `scripts/build-deb.sh` built it: its control
//! fields, every file it must install (with its mode), its conffiles, its
//! maintainer scripts, and, unpacked, its units verified by systemd and its
//! binaries run.
//!
//! Which .deb: the one `DROVER_DEB` names (a relative path is taken from
//! the repository root). scripts/test.sh builds it and sets
//! the variable (`DROVER_DEB=$(scripts/build-deb.sh)`), so CI always checks
//! the package. With `CI` set and no `DROVER_DEB` the test fails. Elsewhere
//! (a plain `cargo test` on a developer's machine) it prints that it skipped
//! and passes, since a release build takes minutes; run scripts/build-deb.sh
//! and set DROVER_DEB to check a package.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use drover_packaging::{repo_root, run, run_ok};

/// The .deb to check; `None`: skip (outside CI only).
fn deb() -> Option<PathBuf> {
    match std::env::var_os("DROVER_DEB").filter(|v| !v.is_empty()) {
        Some(path) => {
            // Relative to the repository root, where the scripts run (the
            // tests run in packaging/).
            let path = repo_root().join(path);
            assert!(
                path.is_file(),
                "DROVER_DEB={} does not exist; build it with scripts/build-deb.sh",
                path.display()
            );
            Some(path)
        }
        None => {
            let in_ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
            assert!(
                !in_ci,
                "CI is set but DROVER_DEB is not: the package must be built \
                 (DROVER_DEB=$(scripts/build-deb.sh)) and checked in CI"
            );
            eprintln!(
                "SKIPPED: DROVER_DEB is not set, so there is no .deb to check. \
                 Run `export DROVER_DEB=$(scripts/build-deb.sh)` and test again."
            );
            None
        }
    }
}

/// Every regular file under `dir`, relative to it, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                out.push(path.strip_prefix(base).unwrap().to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Where each repository file must land, and with which mode.
fn expected_files() -> Vec<(String, Option<PathBuf>, u32)> {
    let root = repo_root();
    let mut want: Vec<(String, Option<PathBuf>, u32)> = vec![
        // Release builds of the four binaries (no repository source).
        ("usr/bin/drover".into(), None, 0o755),
        ("usr/bin/drover-master".into(), None, 0o755),
        ("usr/bin/drover-agent".into(), None, 0o755),
        ("usr/bin/drover-shim".into(), None, 0o755),
    ];
    let same = |from: &str, to: &str| (to.to_string(), Some(root.join(from)), 0o644);
    want.extend([
        same(
            "systemd/drover-master.service",
            "usr/lib/systemd/system/drover-master.service",
        ),
        same(
            "systemd/drover-agent.service",
            "usr/lib/systemd/system/drover-agent.service",
        ),
        same(
            "systemd/sysusers.d/drover.conf",
            "usr/lib/sysusers.d/drover.conf",
        ),
        same("systemd/drover-master.env", "etc/default/drover-master"),
        same("systemd/drover-agent.env", "etc/default/drover-agent"),
        same("config/master.yaml", "etc/drover/master.yaml"),
        same("config/agent.yaml", "etc/drover/agent.yaml"),
        same("README.md", "usr/share/doc/drover/README.md"),
    ]);
    for (from_dir, to_dir) in [
        ("config/jobs", "usr/share/drover/jobs"),
        ("dashboards", "usr/share/drover/dashboards"),
    ] {
        let files = files_under(&root.join(from_dir));
        assert!(!files.is_empty(), "{from_dir} is empty");
        for f in files {
            want.push((
                format!("{to_dir}/{}", f.display()),
                Some(root.join(from_dir).join(&f)),
                0o644,
            ));
        }
    }
    want
}

/// `dpkg-deb -c`: path (without the leading "./") -> permission bits, for
/// regular files.
fn file_list(deb: &Path) -> Vec<(String, u32)> {
    let listing = run_ok(Command::new("dpkg-deb").arg("-c").arg(deb));
    listing
        .lines()
        .filter(|l| l.starts_with('-'))
        .map(|l| {
            let perms = l.split_whitespace().next().unwrap();
            let path = l.rsplit_once(" ./").map(|(_, p)| p).unwrap_or_else(|| {
                panic!("unexpected dpkg-deb -c line: {l}");
            });
            (path.to_string(), mode_bits(perms))
        })
        .collect()
}

/// "-rwxr-xr-x" -> 0o755.
fn mode_bits(perms: &str) -> u32 {
    perms[1..10]
        .chars()
        .fold(0, |mode, c| (mode << 1) | u32::from(c != '-'))
}

#[test]
fn the_package_has_the_right_control_fields() {
    let Some(deb) = deb() else { return };
    let field = |name: &str| {
        run_ok(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(name))
            .trim()
            .to_string()
    };
    assert_eq!(field("Package"), "drover");
    let version = field("Version");
    assert!(
        version.starts_with(&format!("{}-", env!("CARGO_PKG_VERSION"))),
        "Version {version} is not the workspace version {}",
        env!("CARGO_PKG_VERSION")
    );
    let arch = run_ok(Command::new("dpkg").arg("--print-architecture"));
    assert_eq!(field("Architecture"), arch.trim());
    assert!(!field("Maintainer").is_empty());
    assert!(field("Description").contains("drover-master"));
    // $auto: dpkg-shlibdeps found the C library the binaries link.
    let depends = field("Depends");
    assert!(depends.contains("libc6"), "Depends: {depends}");
    println!("{deb:?}: Package drover, Version {version}, Depends {depends}");
}

#[test]
fn the_package_installs_every_file_with_its_mode_and_nothing_else() {
    let Some(deb) = deb() else { return };
    let have = file_list(&deb);
    let want = expected_files();
    let mut missing = Vec::new();
    for (path, _, mode) in &want {
        match have.iter().find(|(p, _)| p == path) {
            None => missing.push(path.clone()),
            Some((_, m)) => assert_eq!(*m, *mode, "{path}: mode {m:o}, want {mode:o}"),
        }
    }
    assert!(
        missing.is_empty(),
        "missing from {}: {missing:#?}\n(a .deb built before these files \
         were added? rebuild with scripts/build-deb.sh)",
        deb.display()
    );
    // cargo-deb adds the copyright file Debian policy requires; anything
    // else would be a file nobody asked for.
    let allowed: BTreeSet<&str> = want
        .iter()
        .map(|(p, _, _)| p.as_str())
        .chain(["usr/share/doc/drover/copyright"])
        .collect();
    let extra: Vec<&str> = have
        .iter()
        .map(|(p, _)| p.as_str())
        .filter(|p| !allowed.contains(p))
        .collect();
    assert!(
        extra.is_empty(),
        "unexpected files in the package: {extra:#?}"
    );
    println!("{} files, all as expected", have.len());
}

#[test]
fn local_edits_to_the_config_files_survive_upgrades() {
    let Some(deb) = deb() else { return };
    let conffiles = run_ok(
        Command::new("dpkg-deb")
            .arg("--info")
            .arg(&deb)
            .arg("conffiles"),
    );
    let listed: BTreeSet<&str> = conffiles.lines().map(str::trim).collect();
    for path in [
        "/etc/drover/master.yaml",
        "/etc/drover/agent.yaml",
        "/etc/default/drover-master",
        "/etc/default/drover-agent",
    ] {
        assert!(
            listed.contains(path),
            "{path} is not a conffile: {listed:?}"
        );
    }
}

#[test]
fn the_maintainer_scripts_create_the_user_and_leave_the_units_to_the_admin() {
    let Some(deb) = deb() else { return };
    let script = |name: &str| run_ok(Command::new("dpkg-deb").arg("--info").arg(&deb).arg(name));
    let postinst = script("postinst");
    // Commands, not comments.
    let lines: Vec<&str> = postinst
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let line_of = |needle: &str| {
        let found: Vec<usize> = (0..lines.len())
            .filter(|&i| lines[i].contains(needle))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "postinst runs `{needle}` {} times, not once:\n{postinst}",
            found.len()
        );
        found[0]
    };
    // The user first (sysusers), then the data dir owned by it.
    let sysusers = line_of("systemd-sysusers ${DPKG_ROOT:+--root=\"$DPKG_ROOT\"} drover.conf");
    let chown = line_of("-o drover -g drover /var/lib/drover/master");
    assert!(
        sysusers < chown,
        "the data dir is made before the user:\n{postinst}"
    );
    assert!(!postinst.contains("#DEBHELPER#"), "{postinst}");
    // Neither unit is enabled or started on install: a machine runs a
    // master, an agent or both, which the admin picks (README: Deploy).
    for unit in ["drover-master.service", "drover-agent.service"] {
        assert!(
            postinst.contains(unit),
            "postinst ignores {unit}:\n{postinst}"
        );
    }
    assert!(
        !postinst.contains("deb-systemd-invoke start"),
        "postinst starts a unit on install:\n{postinst}"
    );
    // Every script is valid sh.
    for name in ["postinst", "prerm", "postrm"] {
        let text = script(name);
        let out = run(Command::new("sh").arg("-n").arg("-c").arg(&text));
        assert!(
            out.status.success(),
            "{name} is not valid sh: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Unpacked: the files from the repository are byte for byte what the
/// package holds (a stale .deb fails here), the binaries run, and the units
/// at their installed paths pass `systemd-analyze verify` against the
/// binaries at the paths ExecStart names.
#[test]
fn the_unpacked_package_matches_the_repository_and_its_units_verify() {
    let Some(deb) = deb() else { return };
    let root = tempfile::TempDir::new().unwrap();
    // The distribution's units first (the targets ours name), then the package.
    let units = root.path().join("usr/lib/systemd/system");
    fs::create_dir_all(&units).unwrap();
    run_ok(
        Command::new("cp")
            .arg("-a")
            .arg("/usr/lib/systemd/system/.")
            .arg(&units),
    );
    run_ok(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(root.path()),
    );

    for (path, source, _) in expected_files() {
        let Some(source) = source else { continue };
        let packaged = fs::read(root.path().join(&path))
            .unwrap_or_else(|e| panic!("{path} is not in the package: {e}"));
        assert!(
            packaged == fs::read(&source).unwrap(),
            "{path} differs from {} (a stale .deb? rebuild with scripts/build-deb.sh)",
            source.display()
        );
    }
    for bin in ["drover", "drover-master", "drover-agent"] {
        let out = run_ok(Command::new(root.path().join("usr/bin").join(bin)).arg("--version"));
        assert!(
            out.contains(env!("CARGO_PKG_VERSION")),
            "{bin} --version: {out}"
        );
    }

    let out = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.path().display()))
        .args(["drover-master.service", "drover-agent.service"]));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.trim().is_empty(),
        "systemd-analyze verify on the unpacked package:\n{text}"
    );
}
