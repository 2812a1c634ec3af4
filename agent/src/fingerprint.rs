//! What this node has (fingerprint) and what it uses (usage).
//!
//! - CPU: logical CPUs × 1000 millicores (sysinfo), capped by what this
//!   process may actually use (`available_parallelism`: affinity, cgroup
//!   quota), so an agent in a limited container does not over-offer.
//! - Memory: total physical memory.
//! - GPUs: through NVML when the NVIDIA driver is there; otherwise, silently,
//!   the configured `fake_gpus`. `attributes["gpu.source"]` says which:
//!   `nvml`, `fake` or `none`.
//! - Attributes: hostname, OS name and version, kernel, architecture, driver
//!   versions — facts for display, not for scheduling.
//!
//! A [`Probe`] is made once and kept: it holds the NVML handle and the
//! sysinfo state that CPU rates are measured against.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use drover_api::protocol::{AllocUsage, GpuDevice, NodeResources, NodeUsage};
use drover_api::AllocId;
use nvml_wrapper::Nvml;
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

use crate::config::{AgentConfig, FakeGpu};

/// Where the GPU list came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GpuSource {
    /// The NVIDIA driver, through NVML.
    Nvml,
    /// `fake_gpus` in the config (NVML not available).
    Fake,
    /// No NVML and no fake GPUs: the node has none.
    None,
}

impl GpuSource {
    pub const fn name(self) -> &'static str {
        match self {
            GpuSource::Nvml => "nvml",
            GpuSource::Fake => "fake",
            GpuSource::None => "none",
        }
    }
}

impl fmt::Display for GpuSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the agent reports at registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    pub hostname: String,
    pub resources: NodeResources,
    /// `hostname`, `os.name`, `os.version`, `kernel.version`, `cpu.arch`,
    /// `cpu.logical`, `gpu.source`, and with NVML `gpu.driver_version`,
    /// `gpu.cuda_version`.
    pub attributes: BTreeMap<String, String>,
    pub gpu_source: GpuSource,
}

/// Usage of a set of processes (an alloc's, with their descendants).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProcessUsage {
    /// CPU time (user + system) used so far by the processes alive now.
    pub cpu_time: Duration,
    /// CPU in use since the previous sample, in millicores.
    pub cpu_millis: u64,
    /// Resident memory now.
    pub rss_bytes: u64,
    /// How many processes were found.
    pub processes: usize,
}

impl From<ProcessUsage> for AllocUsage {
    fn from(u: ProcessUsage) -> AllocUsage {
        AllocUsage {
            cpu_millis: u.cpu_millis,
            memory_bytes: u.rss_bytes,
        }
    }
}

/// Fingerprints the node once, without keeping a [`Probe`].
pub fn fingerprint(cfg: &AgentConfig) -> Fingerprint {
    Probe::new(cfg).fingerprint()
}

/// The GPU list from NVML when given one, else the fake ones.
pub fn gpus(nvml: Option<&Nvml>, fake: &[FakeGpu]) -> (Vec<GpuDevice>, GpuSource) {
    if let Some(nvml) = nvml {
        return (nvml_gpus(nvml), GpuSource::Nvml);
    }
    if fake.is_empty() {
        return (Vec::new(), GpuSource::None);
    }
    (fake_gpus(fake), GpuSource::Fake)
}

/// `fake_gpus` as devices: index = position, uuid `FAKE-<index>`.
pub fn fake_gpus(fake: &[FakeGpu]) -> Vec<GpuDevice> {
    fake.iter()
        .zip(0u32..)
        .map(|(g, index)| GpuDevice {
            index,
            uuid: format!("FAKE-{index}"),
            model: g.model.clone(),
            memory_bytes: g.memory.bytes(),
        })
        .collect()
}

fn nvml_gpus(nvml: &Nvml) -> Vec<GpuDevice> {
    let count = match nvml.device_count() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "NVML: cannot count GPUs");
            return Vec::new();
        }
    };
    let mut out = Vec::with_capacity(count as usize);
    for index in 0..count {
        let found = nvml.device_by_index(index).and_then(|d| {
            Ok(GpuDevice {
                index,
                uuid: d.uuid()?,
                model: d.name()?,
                memory_bytes: d.memory_info()?.total,
            })
        });
        match found {
            Ok(gpu) => out.push(gpu),
            Err(e) => tracing::warn!(index, error = %e, "NVML: skipping a GPU it cannot describe"),
        }
    }
    out
}

/// Logical CPUs (sysinfo), capped by what this process may run on.
fn cpu_count(sys: &System) -> usize {
    let logical = sys.cpus().len();
    let usable = std::thread::available_parallelism().map_or(0, |n| n.get());
    match (logical, usable) {
        (0, u) => u.max(1),
        (l, 0) => l,
        (l, u) => l.min(u),
    }
}

fn hostname() -> String {
    System::host_name()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "localhost".to_string())
}

/// Holds NVML (when there is a driver) and the sysinfo state between samples.
pub struct Probe {
    sys: System,
    nvml: Option<Nvml>,
    fake: Vec<FakeGpu>,
}

impl fmt::Debug for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Probe")
            .field("nvml", &self.nvml.is_some())
            .field("fake_gpus", &self.fake)
            .finish_non_exhaustive()
    }
}

impl Probe {
    /// Loads NVML if it can (no driver: quietly none) and takes a first
    /// CPU sample, so that the next [`usage`](Self::usage) has a baseline.
    pub fn new(cfg: &AgentConfig) -> Self {
        let nvml = match Nvml::init() {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::debug!(error = %e, "NVML not available; using fake_gpus");
                None
            }
        };
        Self::with_nvml(nvml, cfg)
    }

    /// As [`new`](Self::new) with a given NVML handle (or none: as on a
    /// machine without the driver).
    pub fn with_nvml(nvml: Option<Nvml>, cfg: &AgentConfig) -> Self {
        // sysinfo keeps a /proc/<pid>/stat open for every process it has
        // refreshed, up to half the open-file limit: on a busy machine
        // thousands of the agent's descriptors, held for other people's
        // processes. Reopening them at each refresh costs little.
        sysinfo::set_open_files_limit(0);
        let mut sys = System::new();
        sys.refresh_cpu_all();
        sys.refresh_memory();
        Probe {
            sys,
            nvml,
            fake: cfg.fake_gpus.clone(),
        }
    }

    /// Whether NVML is loaded.
    pub fn has_nvml(&self) -> bool {
        self.nvml.is_some()
    }

    /// The node's capacity and facts.
    pub fn fingerprint(&mut self) -> Fingerprint {
        self.sys.refresh_memory();
        let cpus = cpu_count(&self.sys);
        let (gpus, gpu_source) = gpus(self.nvml.as_ref(), &self.fake);
        let hostname = hostname();
        let mut attributes = BTreeMap::new();
        attributes.insert("hostname".to_string(), hostname.clone());
        let facts = [
            ("os.name", System::name()),
            ("os.version", System::os_version()),
            ("os.long_version", System::long_os_version()),
            ("kernel.version", System::kernel_version()),
            ("cpu.arch", Some(System::cpu_arch())),
            ("cpu.logical", Some(self.sys.cpus().len().to_string())),
        ];
        for (k, v) in facts {
            if let Some(v) = v.filter(|v| !v.is_empty()) {
                attributes.insert(k.to_string(), v);
            }
        }
        if let Some(brand) = self
            .sys
            .cpus()
            .first()
            .map(|c| c.brand().trim().to_string())
        {
            if !brand.is_empty() {
                attributes.insert("cpu.model".to_string(), brand);
            }
        }
        attributes.insert("gpu.source".to_string(), gpu_source.name().to_string());
        attributes.insert("gpu.count".to_string(), gpus.len().to_string());
        if let Some(nvml) = &self.nvml {
            if let Ok(v) = nvml.sys_driver_version() {
                attributes.insert("gpu.driver_version".to_string(), v);
            }
            if let Ok(v) = nvml.sys_cuda_driver_version() {
                attributes.insert(
                    "gpu.cuda_version".to_string(),
                    format!("{}.{}", v / 1000, (v % 1000) / 10),
                );
            }
        }
        Fingerprint {
            hostname,
            resources: NodeResources {
                cpu_millis: cpus as u64 * 1000,
                memory_bytes: self.sys.total_memory(),
                gpus,
            },
            attributes,
            gpu_source,
        }
    }

    /// Node CPU in use (millicores, since the previous call; 0 on the first
    /// call after less than ~200 ms) and memory in use, plus the usage of
    /// each alloc given its processes' pids (descendants included).
    pub fn usage(&mut self, allocs: &BTreeMap<AllocId, Vec<u32>>) -> NodeUsage {
        self.sys.refresh_cpu_usage();
        self.sys.refresh_memory();
        let cpus = cpu_count(&self.sys) as f64;
        let logical = self.sys.cpus().len().max(1) as f64;
        // global_cpu_usage is a percentage of all logical CPUs.
        let busy = f64::from(self.sys.global_cpu_usage()) / 100.0 * logical;
        let cpu_millis = (busy.min(cpus) * 1000.0).round() as u64;
        let allocs = if allocs.is_empty() {
            BTreeMap::new()
        } else {
            self.alloc_usage(allocs)
                .into_iter()
                .map(|(a, u)| (a, u.into()))
                .collect()
        };
        NodeUsage {
            cpu_millis,
            memory_bytes: self.sys.used_memory(),
            allocs,
        }
    }

    /// Usage of each alloc's processes and their descendants. An alloc none
    /// of whose processes is alive gets a zero entry.
    pub fn alloc_usage(
        &mut self,
        allocs: &BTreeMap<AllocId, Vec<u32>>,
    ) -> BTreeMap<AllocId, ProcessUsage> {
        self.refresh_all_processes();
        let children = self.children();
        allocs
            .iter()
            .map(|(a, pids)| (a.clone(), self.sum_tree(pids, &children)))
            .collect()
    }

    /// Usage of the given processes and their descendants.
    pub fn process_usage(&mut self, pids: &[u32]) -> ProcessUsage {
        self.refresh_all_processes();
        let children = self.children();
        self.sum_tree(pids, &children)
    }

    /// GPU utilisation (0..1) by device index; empty without NVML.
    pub fn gpu_utilization(&self) -> Vec<(u32, f64)> {
        let Some(nvml) = &self.nvml else {
            return Vec::new();
        };
        let count = nvml.device_count().unwrap_or(0);
        (0..count)
            .filter_map(|i| {
                let u = nvml.device_by_index(i).ok()?.utilization_rates().ok()?;
                Some((i, f64::from(u.gpu) / 100.0))
            })
            .collect()
    }

    fn refresh_all_processes(&mut self) {
        self.sys.refresh_processes_specifics(
            ProcessesToUpdate::All,
            true,
            ProcessRefreshKind::nothing().with_memory().with_cpu(),
        );
    }

    fn children(&self) -> HashMap<Pid, Vec<Pid>> {
        let mut map: HashMap<Pid, Vec<Pid>> = HashMap::new();
        for (pid, p) in self.sys.processes() {
            // Threads are listed as processes on Linux; their usage is
            // already in their process's.
            if p.thread_kind().is_some() {
                continue;
            }
            if let Some(parent) = p.parent() {
                map.entry(parent).or_default().push(*pid);
            }
        }
        map
    }

    fn sum_tree(&self, roots: &[u32], children: &HashMap<Pid, Vec<Pid>>) -> ProcessUsage {
        let mut seen = HashSet::new();
        let mut stack: Vec<Pid> = roots.iter().map(|&p| Pid::from_u32(p)).collect();
        let mut u = ProcessUsage::default();
        let mut cpu_percent = 0.0f64;
        let mut cpu_ms = 0u64;
        while let Some(pid) = stack.pop() {
            if !seen.insert(pid) {
                continue;
            }
            let Some(p) = self.sys.process(pid) else {
                continue;
            };
            u.processes += 1;
            u.rss_bytes += p.memory();
            cpu_ms += p.accumulated_cpu_time();
            cpu_percent += f64::from(p.cpu_usage());
            if let Some(kids) = children.get(&pid) {
                stack.extend(kids.iter().copied());
            }
        }
        u.cpu_time = Duration::from_millis(cpu_ms);
        // cpu_usage is a percentage of one CPU.
        u.cpu_millis = (cpu_percent * 10.0).round() as u64;
        u
    }
}
