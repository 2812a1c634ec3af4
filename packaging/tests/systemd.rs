//! The systemd side of a deployment, checked with systemd's own tools:
//! `systemd-analyze verify` on both units, `systemd-analyze security` on
//! both (the master must stay at an exposure level of 2.0 or below), the
//! sysusers file through `systemd-sysusers`, the units' settings that the
//! binaries rely on, and the binaries' READY=1 / STOPPING=1 notifications
//! (`Type=notify`) over a real notify socket.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use drover_packaging::{
    binary, expanded_variables, exposure_level, parse_unit, repo_root, run, run_ok, setting,
    UnitFile,
};

const UNITS: [&str; 2] = ["drover-master.service", "drover-agent.service"];
/// The highest exposure level `systemd-analyze security` may give the master.
const MASTER_MAX_EXPOSURE: f64 = 2.0;
/// Where the distribution's own units are: `verify` loads the targets ours
/// name (network-online.target, multi-user.target, sysinit.target, ...).
const SYSTEM_UNIT_DIR: &str = "/usr/lib/systemd/system";

fn unit_path(name: &str) -> PathBuf {
    repo_root().join("systemd").join(name)
}

fn unit(name: &str) -> UnitFile {
    let path = unit_path(name);
    let text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    parse_unit(&text)
}

/// A root directory laid out as the package installs the units, for
/// `systemd-analyze verify --root`: the distribution's units, ours beside
/// them, and executables at the paths ExecStart names (`verify` only checks
/// that they exist and are executable; the binaries themselves are run by the
/// sd_notify tests below and by the package test).
fn verify_root(extra_units: &[(&str, &str)]) -> tempfile::TempDir {
    let root = tempfile::TempDir::new().unwrap();
    let units = root.path().join(SYSTEM_UNIT_DIR.trim_start_matches('/'));
    fs::create_dir_all(&units).unwrap();
    // cp -a keeps the symlinks (aliases, masks) as they are.
    run_ok(
        Command::new("cp")
            .arg("-a")
            .arg(format!("{SYSTEM_UNIT_DIR}/."))
            .arg(&units),
    );
    for name in UNITS {
        fs::copy(unit_path(name), units.join(name)).unwrap();
    }
    for (name, text) in extra_units {
        fs::write(units.join(name), text).unwrap();
    }
    let bin = root.path().join("usr/bin");
    fs::create_dir_all(&bin).unwrap();
    for exe in ["drover-master", "drover-agent"] {
        let path = bin.join(exe);
        fs::write(&path, "#!/bin/sh\nexit 0\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }
    root
}

/// `systemd-analyze verify --root=<root> <units>`: its exit status and
/// everything it printed. Unknown keys and bad values are printed but do not
/// change the exit status, so callers check both.
fn verify(root: &Path, units: &[&str]) -> (bool, String) {
    let out = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .args(units));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn both_units_pass_systemd_analyze_verify_without_a_warning() {
    let root = verify_root(&[]);
    let (ok, output) = verify(root.path(), &UNITS);
    assert!(
        ok && output.trim().is_empty(),
        "systemd-analyze verify {UNITS:?} (exit ok: {ok}) reported:\n{output}"
    );
}

/// The check above can fail: a unit with a misspelt value and an unknown
/// key is reported (so an empty report means something).
#[test]
fn verify_reports_a_broken_unit() {
    let broken = "[Unit]\nDescription=broken\n[Service]\nType=notify\n\
                  ExecStart=/usr/bin/drover-master\nRestart=on-failur\nBogusKey=1\n";
    let root = verify_root(&[("drover-broken.service", broken)]);
    let (_, output) = verify(root.path(), &["drover-broken.service"]);
    assert!(
        output.contains("on-failur") && output.contains("BogusKey"),
        "systemd-analyze verify did not report the broken unit:\n{output}"
    );
}

/// `systemd-analyze security --offline=yes <unit file>`: the report, and
/// the overall exposure level it ends with (0 = locked down, 10 = exposed).
fn security(name: &str) -> (f64, String) {
    let path = unit_path(name);
    let report = run_ok(
        Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(&path),
    );
    let level = exposure_level(&report)
        .unwrap_or_else(|| panic!("no overall exposure level in the report:\n{report}"));
    (level, report)
}

#[test]
fn the_master_unit_is_sandboxed_to_an_exposure_of_at_most_2() {
    let (level, report) = security("drover-master.service");
    println!("drover-master.service: overall exposure level {level}");
    assert!(
        level <= MASTER_MAX_EXPOSURE,
        "drover-master.service exposure {level} > {MASTER_MAX_EXPOSURE}:\n{report}"
    );
}

/// No threshold: the agent runs as root and every task inherits its sandbox,
/// so it is hardened only as far as tasks cannot notice (see the unit's
/// comments). The level is printed for the record, and must be a level.
#[test]
fn the_agent_unit_exposure_is_reported() {
    let (level, _) = security("drover-agent.service");
    println!("drover-agent.service: overall exposure level {level}");
    assert!((0.0..=10.0).contains(&level));
}

/// What the binaries and the package rely on, with the reason each matters.
#[test]
fn the_units_set_what_the_binaries_rely_on() {
    for name in UNITS {
        let u = unit(name);
        // main.rs sends READY=1 / STOPPING=1; with Type=simple systemd would
        // call the unit started before the socket listens.
        assert_eq!(setting(&u, "Service", "Type"), Some("notify"), "{name}");
        assert_eq!(
            setting(&u, "Service", "Restart"),
            Some("on-failure"),
            "{name}"
        );
        let exec = setting(&u, "Service", "ExecStart").expect("ExecStart");
        assert!(exec.contains("--config"), "{name}: {exec}");
        assert_eq!(
            setting(&u, "Install", "WantedBy"),
            Some("multi-user.target"),
            "{name}"
        );
    }

    let master = unit("drover-master.service");
    // The package's sysusers file creates this user; the store's default
    // data_dir (config/master.yaml) is this StateDirectory.
    assert_eq!(setting(&master, "Service", "User"), Some("drover"));
    assert_eq!(
        setting(&master, "Service", "StateDirectory"),
        Some("drover/master")
    );

    let agent = unit("drover-agent.service");
    // Tasks live under their shims in the agent's cgroup: stopping or
    // restarting the agent must signal the agent alone, or every upgrade
    // would kill every task.
    assert_eq!(setting(&agent, "Service", "KillMode"), Some("process"));
    // Root: it switches tasks to their user and writes /sys/fs/cgroup.
    assert_eq!(setting(&agent, "Service", "User"), None);
    assert_eq!(
        setting(&agent, "Service", "StateDirectory"),
        Some("drover/agent")
    );
    // The shim and the executor need these (setgroups/setgid/setuid to the
    // task user, chown of the work dir, signals to the task's processes).
    let caps = setting(&agent, "Service", "CapabilityBoundingSet").expect("a bounding set");
    for cap in ["CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_KILL"] {
        assert!(
            caps.split_whitespace().any(|c| c == cap),
            "{cap} missing: {caps}"
        );
    }
    // Writes to /sys/fs/cgroup must stay possible.
    for key in ["ProtectControlGroups", "ProtectKernelTunables"] {
        assert_eq!(setting(&agent, "Service", key), None, "{key}");
    }
    assert_ne!(setting(&agent, "Service", "ProtectSystem"), Some("strict"));
}

/// Every variable a unit's ExecStart expands is documented in the
/// environment file the package installs as /etc/default/<unit>, and those
/// files hold only comments and KEY=value lines (systemd reads them).
#[test]
fn the_env_files_document_every_variable_the_units_use() {
    for (unit_name, env_file) in [
        ("drover-master.service", "drover-master.env"),
        ("drover-agent.service", "drover-agent.env"),
    ] {
        let u = unit(unit_name);
        let default_name = env_file.trim_end_matches(".env");
        assert_eq!(
            setting(&u, "Service", "EnvironmentFile"),
            Some(format!("-/etc/default/{default_name}").as_str()),
            "{unit_name}"
        );
        let text = fs::read_to_string(repo_root().join("systemd").join(env_file)).unwrap();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, _) = line.split_once('=').unwrap_or_else(|| {
                panic!("{env_file}: not a KEY=value line: {line}");
            });
            assert!(
                key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{env_file}: bad key {key}"
            );
        }
        let exec = setting(&u, "Service", "ExecStart").unwrap();
        let vars = expanded_variables(exec);
        assert!(!vars.is_empty(), "{unit_name}: {exec}");
        for var in vars {
            assert!(
                text.contains(&format!("{var}=")),
                "{env_file} does not document {var}, which {unit_name} expands"
            );
        }
    }
}

/// `systemd-sysusers` accepts the file and makes the user the master runs
/// as: a system user (uid below 1000), no login, home in /var/lib/drover.
#[test]
fn the_sysusers_file_creates_the_drover_user() {
    let root = tempfile::TempDir::new().unwrap();
    fs::create_dir_all(root.path().join("etc")).unwrap();
    let out = run(Command::new("systemd-sysusers")
        .arg(format!("--root={}", root.path().display()))
        .arg(repo_root().join("systemd/sysusers.d/drover.conf")));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-sysusers failed: {stderr}");
    assert!(
        !stderr.contains("ignoring") && !stderr.contains("Failed"),
        "{stderr}"
    );
    let passwd = fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    let entry = passwd
        .lines()
        .find(|l| l.starts_with("drover:"))
        .unwrap_or_else(|| panic!("no drover user in:\n{passwd}"));
    let fields: Vec<&str> = entry.split(':').collect();
    let uid: u32 = fields[2].parse().unwrap();
    assert!(uid < 1000, "not a system uid: {entry}");
    assert_eq!(fields[5], "/var/lib/drover", "{entry}");
    assert_eq!(fields[6], "/usr/sbin/nologin", "{entry}");
    let group = fs::read_to_string(root.path().join("etc/group")).unwrap();
    assert!(group.lines().any(|l| l.starts_with("drover:")), "{group}");
}

// ---------------------------------------------------------------------------
// sd_notify: the binaries' side of Type=notify
// ---------------------------------------------------------------------------

/// A child process killed (SIGKILL) and reaped when dropped, so a failing
/// test leaves nothing running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Receives one notification datagram, waiting at most `timeout`.
fn next_message(sock: &UnixDatagram, timeout: Duration, what: &str) -> String {
    sock.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 4096];
    match sock.recv(&mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(e) => panic!("no sd_notify message ({what}) within {timeout:?}: {e}"),
    }
}

/// Starts `cmd` with NOTIFY_SOCKET set, as systemd does for Type=notify;
/// expects READY=1, then after SIGTERM STOPPING=1 and a clean exit.
fn check_notify(mut cmd: Command, what: &str) {
    let dir = tempfile::TempDir::new().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&socket_path).unwrap();
    let log = dir.path().join("stderr.log");
    let child = cmd
        .env("NOTIFY_SOCKET", &socket_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let mut child = Running(child);
    let show_log = || fs::read_to_string(&log).unwrap_or_default();

    let ready = next_message(&sock, Duration::from_secs(30), "READY=1");
    assert_eq!(ready.trim(), "READY=1", "{what}; its log:\n{}", show_log());

    let pid = nix::unistd::Pid::from_raw(child.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let stopping = next_message(&sock, Duration::from_secs(30), "STOPPING=1");
    assert_eq!(
        stopping.trim(),
        "STOPPING=1",
        "{what}; its log:\n{}",
        show_log()
    );

    for _ in 0..300 {
        if let Some(status) = child.0.try_wait().unwrap() {
            assert!(
                status.success(),
                "{what} exited {status}; log:\n{}",
                show_log()
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "{what} did not exit within 30 s of SIGTERM; log:\n{}",
        show_log()
    );
}

#[test]
fn the_master_notifies_ready_once_listening_and_stopping_on_sigterm() {
    let data = tempfile::TempDir::new().unwrap();
    let mut cmd = Command::new(binary("drover-master"));
    // Port 0: any free port; the notification, not the port, is the point.
    cmd.args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path());
    check_notify(cmd, "drover-master");
}

/// The agent is ready once its own loops run, whether or not a master
/// answers (registering is retried in the background), so this one points
/// it at a port where nothing listens.
#[test]
fn the_agent_notifies_ready_without_waiting_for_a_master_and_stopping_on_sigterm() {
    let data = tempfile::TempDir::new().unwrap();
    let nobody = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let unanswered = nobody.local_addr().unwrap();
    drop(nobody);
    let mut cmd = Command::new(binary("drover-agent"));
    cmd.args(["--master", &unanswered.to_string()])
        .args(["--log-listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path());
    check_notify(cmd, "drover-agent");
}
