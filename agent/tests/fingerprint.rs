//! Fingerprint and usage on the machine the tests run on.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use drover_agent::config::{AgentConfig, FakeGpu};
use drover_agent::fingerprint::{fingerprint, GpuSource, Probe};
use drover_api::{AllocId, Memory};

fn cfg_with_fakes() -> AgentConfig {
    AgentConfig {
        fake_gpus: vec![
            FakeGpu {
                model: "NVIDIA H100 80GB HBM3".to_string(),
                memory: Memory(80 << 30),
            },
            FakeGpu {
                model: "Tesla T4".to_string(),
                memory: Memory(16 << 30),
            },
        ],
        ..AgentConfig::default()
    }
}

#[test]
fn cpu_and_memory_are_this_machines() {
    let fp = fingerprint(&AgentConfig::default());
    let cpus = std::thread::available_parallelism().unwrap().get() as u64;
    assert_eq!(fp.resources.cpu_millis, cpus * 1000);
    assert!(fp.resources.memory_bytes > 64 << 20, "{fp:?}");
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let total_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert_eq!(fp.resources.memory_bytes, total_kib * 1024);
}

#[test]
fn attributes_carry_the_hostname_and_os() {
    let fp = fingerprint(&AgentConfig::default());
    let expected = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(fp.hostname, expected);
    assert_eq!(fp.attributes["hostname"], expected);
    assert!(fp.attributes.contains_key("kernel.version"), "{fp:?}");
    assert!(fp.attributes.contains_key("os.name"), "{fp:?}");
    assert_eq!(fp.attributes["gpu.source"], fp.gpu_source.name());
}

#[test]
fn fake_gpus_stand_in_when_nvml_is_absent() {
    let cfg = cfg_with_fakes();
    // Forced: as on a machine without the NVIDIA driver.
    let fp = Probe::with_nvml(None, &cfg).fingerprint();
    assert_eq!(fp.gpu_source, GpuSource::Fake);
    assert_eq!(fp.attributes["gpu.source"], "fake");
    let gpus = &fp.resources.gpus;
    assert_eq!(gpus.len(), 2);
    for (i, g) in gpus.iter().enumerate() {
        assert_eq!(g.index, i as u32);
        assert_eq!(g.uuid, format!("FAKE-{i}"));
        assert_eq!(g.model, cfg.fake_gpus[i].model);
        assert_eq!(g.memory_bytes, cfg.fake_gpus[i].memory.bytes());
    }

    // Without fake GPUs either, the node has none.
    let fp = Probe::with_nvml(None, &AgentConfig::default()).fingerprint();
    assert_eq!(fp.gpu_source, GpuSource::None);
    assert!(fp.resources.gpus.is_empty());
    assert_eq!(fp.attributes["gpu.source"], "none");
}

#[test]
fn the_real_probe_uses_nvml_when_the_driver_is_there_else_the_fakes() {
    let cfg = cfg_with_fakes();
    let mut probe = Probe::new(&cfg);
    let fp = probe.fingerprint();
    if probe.has_nvml() {
        assert_eq!(fp.gpu_source, GpuSource::Nvml);
        assert!(fp.attributes.contains_key("gpu.driver_version"), "{fp:?}");
        for (i, g) in fp.resources.gpus.iter().enumerate() {
            assert_eq!(g.index, i as u32);
            assert!(!g.uuid.is_empty() && !g.model.is_empty() && g.memory_bytes > 0);
        }
        assert_eq!(probe.gpu_utilization().len(), fp.resources.gpus.len());
    } else {
        assert_eq!(fp.gpu_source, GpuSource::Fake);
        assert_eq!(fp.resources.gpus.len(), 2);
        assert_eq!(fp.resources.gpus[1].model, "Tesla T4");
        assert!(probe.gpu_utilization().is_empty());
    }
}

#[test]
fn usage_sees_node_memory_and_a_busy_process_tree() {
    let mut probe = Probe::new(&AgentConfig::default());
    // A shell whose child burns CPU: usage counts descendants.
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg("sh -c 'while :; do :; done' & wait")
        .process_group(0)
        .spawn()
        .unwrap();
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let alloc: AllocId = "burn/0/1".parse().unwrap();
    let gone: AllocId = "gone/0/1".parse().unwrap();
    let allocs = BTreeMap::from([
        (alloc.clone(), vec![child.id()]),
        (gone.clone(), vec![0x7fff_fff0]),
    ]);
    let _ = probe.usage(&allocs);
    let start = Instant::now();
    let mut seen = None;
    while start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(400));
        let u = probe.process_usage(&[child.id()]);
        if u.processes >= 2 && u.cpu_time >= Duration::from_millis(200) && u.cpu_millis > 100 {
            seen = Some(u);
            break;
        }
    }
    let node = probe.usage(&allocs);
    nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL).unwrap();
    child.wait().unwrap();
    let u = seen.expect("the busy child was never seen using CPU");
    assert!(u.rss_bytes > 0, "{u:?}");
    assert!(node.memory_bytes > 0);
    assert!(node.cpu_millis > 0, "{node:?}");
    assert!(node.allocs[&alloc].memory_bytes > 0, "{node:?}");
    assert_eq!(node.allocs[&gone].memory_bytes, 0);
    assert_eq!(node.allocs[&gone].cpu_millis, 0);
}
