//! The scratch state of one scheduling pass: free resources per node as this
//! pass's decisions consume them, a load-ordered index of ready nodes, and a
//! journal so that a tentative group of decisions (gang admission) can be
//! rolled back exactly.

use std::collections::{BTreeMap, BTreeSet};

use drover_api::{JobId, TaskId};

use crate::feasibility::{gpu_model_matches, static_misfit, Explanation, Misfit};
use crate::view::{ClusterView, Demand, NodeStatus, TaskRequest};
use crate::Decision;

/// (dominant share, live utilisation), both in fixed point so that ordering is
/// exact and the same on every machine.
type LoadKey = (u64, u64);

const FIXED_ONE: f64 = 1e9;

fn fixed(x: f64) -> u64 {
    if x.is_nan() || x <= 0.0 {
        0
    } else {
        // Saturating float-to-int cast; values past 1e6 only mean "very full".
        (x.min(1e6) * FIXED_ONE) as u64
    }
}

fn share(used: u64, cap: u64) -> f64 {
    match (used, cap) {
        (0, _) => 0.0,
        (_, 0) => f64::INFINITY,
        (u, c) => u as f64 / c as f64,
    }
}

#[derive(Debug, Clone)]
struct NodeState {
    used_cpu: u64,
    used_mem: u64,
    /// Parallel to the node's `gpus`.
    gpu_used: Vec<bool>,
    key: LoadKey,
}

impl NodeState {
    /// Counts what an existing alloc or a reservation holds on node `ni`.
    fn hold(&mut self, view: &ClusterView, ni: usize, cpu: u64, mem: u64, gpus: &[u32]) {
        self.used_cpu = self.used_cpu.saturating_add(cpu);
        self.used_mem = self.used_mem.saturating_add(mem);
        for dev in gpus {
            if let Some(pos) = gpu_pos(view, ni, *dev) {
                self.gpu_used[pos] = true;
            }
        }
    }
}

#[derive(Debug)]
enum Op {
    Place {
        node: usize,
        cpu: u64,
        mem: u64,
        gpu_pos: Vec<usize>,
        elastic_job: Option<JobId>,
    },
    Preempt {
        alloc: usize,
    },
}

/// A point to roll back to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mark {
    journal: usize,
    decisions: usize,
}

#[derive(Debug)]
pub(crate) struct Workspace<'v> {
    pub(crate) view: &'v ClusterView,
    nodes: Vec<NodeState>,
    /// Ready nodes, least loaded first; ties broken by node order.
    by_load: BTreeSet<(LoadKey, usize)>,
    /// The subset of `by_load` with a free GPU. GPU nodes are usually few
    /// and, once one device is taken, more loaded than the rest: without
    /// this a GPU task would walk past every CPU-only node.
    by_load_gpu: BTreeSet<(LoadKey, usize)>,
    /// Live alloc indices (into `view.allocs()`) per node.
    allocs_on: Vec<Vec<usize>>,
    preempted: Vec<bool>,
    /// Live shards per elastic job, including this pass's placements.
    job_live: BTreeMap<JobId, u32>,
    /// Live shards per elastic job per node.
    job_on_node: BTreeMap<JobId, BTreeMap<usize, u32>>,
    journal: Vec<Op>,
    decisions: Vec<Decision>,
}

impl<'v> Workspace<'v> {
    pub(crate) fn new(view: &'v ClusterView) -> Self {
        let mut nodes: Vec<NodeState> = view
            .nodes()
            .iter()
            .map(|n| NodeState {
                used_cpu: 0,
                used_mem: 0,
                gpu_used: vec![false; n.gpus.len()],
                key: (0, 0),
            })
            .collect();
        let mut allocs_on = vec![Vec::new(); nodes.len()];
        let mut job_live = BTreeMap::new();
        let mut job_on_node = BTreeMap::new();
        for (ai, alloc) in view.allocs().iter().enumerate() {
            // An alloc on a node the view does not know holds nothing here.
            let Some(ni) = view.node_index(&alloc.node) else {
                continue;
            };
            nodes[ni].hold(view, ni, alloc.cpu_millis, alloc.memory_bytes, &alloc.gpus);
            allocs_on[ni].push(ai);
            if alloc.elastic.is_some() {
                count_shard(&mut job_live, &mut job_on_node, alloc.job(), ni, true);
            }
        }
        // Reserved capacity is as good as taken: the preemptor it is held
        // for is placed outside the policies, once its victims are gone.
        for r in view.reservations() {
            let Some(ni) = view.node_index(&r.node) else {
                continue;
            };
            nodes[ni].hold(view, ni, r.cpu_millis, r.memory_bytes, &r.gpus);
        }
        let mut ws = Workspace {
            view,
            nodes,
            by_load: BTreeSet::new(),
            by_load_gpu: BTreeSet::new(),
            allocs_on,
            preempted: vec![false; view.allocs().len()],
            job_live,
            job_on_node,
            journal: Vec::new(),
            decisions: Vec::new(),
        };
        for ni in 0..ws.nodes.len() {
            let key = ws.compute_key(ni);
            ws.nodes[ni].key = key;
            ws.index(ni, true);
        }
        ws
    }

    pub(crate) fn into_decisions(self) -> Vec<Decision> {
        self.decisions
    }

    pub(crate) fn node_count(&self) -> usize {
        self.nodes.len()
    }

    fn compute_key(&self, ni: usize) -> LoadKey {
        let node = &self.view.nodes()[ni];
        let st = &self.nodes[ni];
        let gpus_used = st.gpu_used.iter().filter(|u| **u).count() as u64;
        let dominant = share(st.used_cpu, node.cpu_millis)
            .max(share(st.used_mem, node.memory_bytes))
            .max(share(gpus_used, node.gpus.len() as u64));
        (fixed(dominant), fixed(node.utilisation.clamp(0.0, 1.0)))
    }

    /// Adds a ready node to the load indexes it belongs in, or removes it.
    fn index(&mut self, ni: usize, add: bool) {
        if self.view.nodes()[ni].status != NodeStatus::Ready {
            return;
        }
        let entry = (self.nodes[ni].key, ni);
        let has_free_gpu = self.nodes[ni].gpu_used.iter().any(|used| !used);
        if add {
            self.by_load.insert(entry);
            if has_free_gpu {
                self.by_load_gpu.insert(entry);
            }
        } else {
            self.by_load.remove(&entry);
            self.by_load_gpu.remove(&entry);
        }
    }

    /// Re-files a node after its usage changed. Removal goes by the stored
    /// key and ignores GPU state, so this is right whatever changed.
    fn rekey(&mut self, ni: usize) {
        self.index(ni, false);
        self.nodes[ni].key = self.compute_key(ni);
        self.index(ni, true);
    }

    /// The node's load as used by least-loaded ordering (lower is emptier).
    pub(crate) fn load(&self, ni: usize) -> (u64, u64) {
        self.nodes[ni].key
    }

    pub(crate) fn free_cpu(&self, ni: usize) -> u64 {
        self.view.nodes()[ni]
            .cpu_millis
            .saturating_sub(self.nodes[ni].used_cpu)
    }

    pub(crate) fn free_mem(&self, ni: usize) -> u64 {
        self.view.nodes()[ni]
            .memory_bytes
            .saturating_sub(self.nodes[ni].used_mem)
    }

    /// Free GPUs on the node that satisfy the demand's model.
    pub(crate) fn free_gpus(&self, ni: usize, demand: &Demand) -> usize {
        let node = &self.view.nodes()[ni];
        node.gpus
            .iter()
            .zip(&self.nodes[ni].gpu_used)
            .filter(|(g, used)| !**used && gpu_model_matches(demand, &g.model))
            .count()
    }

    /// Can the node take the task now? The first reason it cannot, if not.
    pub(crate) fn misfit(&self, ni: usize, demand: &Demand) -> Option<Misfit> {
        if let Some(m) = static_misfit(&self.view.nodes()[ni], demand) {
            return Some(m);
        }
        if self.free_cpu(ni) < demand.cpu_millis {
            return Some(Misfit::InsufficientCpu);
        }
        if self.free_mem(ni) < demand.memory_bytes {
            return Some(Misfit::InsufficientMemory);
        }
        if demand.gpus > 0 && (self.free_gpus(ni, demand) as u64) < u64::from(demand.gpus) {
            return Some(Misfit::InsufficientGpus);
        }
        None
    }

    pub(crate) fn fits(&self, ni: usize, demand: &Demand) -> bool {
        self.misfit(ni, demand).is_none()
    }

    /// Ready nodes that might take the demand, from least to most loaded.
    pub(crate) fn by_load(&self, demand: &Demand) -> impl Iterator<Item = usize> + '_ {
        let set = if demand.gpus > 0 {
            &self.by_load_gpu
        } else {
            &self.by_load
        };
        set.iter().map(|(_, ni)| *ni)
    }

    /// The least-loaded node that can take the demand now.
    pub(crate) fn least_loaded_fit(&self, demand: &Demand) -> Option<usize> {
        self.by_load(demand).find(|ni| self.fits(*ni, demand))
    }

    /// Why no node can take the demand: one reason per node, counted.
    pub(crate) fn explain(&self, demand: &Demand) -> String {
        let mut e = Explanation::default();
        for ni in 0..self.nodes.len() {
            if let Some(m) = self.misfit(ni, demand) {
                e.add(m);
            }
        }
        e.render()
    }

    /// Places a task on a node the caller has checked with [`Self::fits`].
    /// GPUs are taken lowest index first.
    pub(crate) fn place(&mut self, ni: usize, task: &TaskRequest) {
        let demand = &task.demand;
        let node = &self.view.nodes()[ni];
        let st = &mut self.nodes[ni];
        let mut gpu_pos = Vec::with_capacity(demand.gpus as usize);
        for (pos, g) in node.gpus.iter().enumerate() {
            if gpu_pos.len() == demand.gpus as usize {
                break;
            }
            if !st.gpu_used[pos] && gpu_model_matches(demand, &g.model) {
                st.gpu_used[pos] = true;
                gpu_pos.push(pos);
            }
        }
        st.used_cpu = st.used_cpu.saturating_add(demand.cpu_millis);
        st.used_mem = st.used_mem.saturating_add(demand.memory_bytes);
        let elastic_job = task.elastic.map(|_| task.job().clone());
        if let Some(job) = &elastic_job {
            count_shard(&mut self.job_live, &mut self.job_on_node, job, ni, true);
        }
        self.decisions.push(Decision::Place {
            task: task.task.clone(),
            node: node.id.clone(),
            gpus: gpu_pos.iter().map(|p| node.gpus[*p].index).collect(),
        });
        self.journal.push(Op::Place {
            node: ni,
            cpu: demand.cpu_millis,
            mem: demand.memory_bytes,
            gpu_pos,
            elastic_job,
        });
        self.rekey(ni);
    }

    /// Live allocs on a node that are neither stopping nor preempted in
    /// this pass: the ones that could still be asked to make room.
    pub(crate) fn live_allocs_on(&self, ni: usize) -> impl Iterator<Item = usize> + '_ {
        self.allocs_on[ni]
            .iter()
            .copied()
            .filter(|ai| !self.preempted[*ai] && !self.view.allocs()[*ai].stopping)
    }

    pub(crate) fn preempt(&mut self, ai: usize, for_task: &TaskId) {
        let alloc = &self.view.allocs()[ai];
        let ni = self
            .view
            .node_index(&alloc.node)
            .expect("allocs_on only holds allocs on known nodes");
        self.preempted[ai] = true;
        self.add_alloc_usage(ai, ni, false);
        self.decisions.push(Decision::Preempt {
            victim: alloc.id.clone(),
            for_task: for_task.clone(),
        });
        self.journal.push(Op::Preempt { alloc: ai });
        self.rekey(ni);
    }

    /// Adds (`add`) or removes an existing alloc's usage on its node.
    fn add_alloc_usage(&mut self, ai: usize, ni: usize, add: bool) {
        let alloc = &self.view.allocs()[ai];
        let st = &mut self.nodes[ni];
        if add {
            st.used_cpu = st.used_cpu.saturating_add(alloc.cpu_millis);
            st.used_mem = st.used_mem.saturating_add(alloc.memory_bytes);
        } else {
            st.used_cpu = st.used_cpu.saturating_sub(alloc.cpu_millis);
            st.used_mem = st.used_mem.saturating_sub(alloc.memory_bytes);
        }
        for dev in &alloc.gpus {
            if let Some(pos) = gpu_pos(self.view, ni, *dev) {
                st.gpu_used[pos] = add;
            }
        }
        if alloc.elastic.is_some() {
            count_shard(
                &mut self.job_live,
                &mut self.job_on_node,
                alloc.job(),
                ni,
                add,
            );
        }
    }

    pub(crate) fn wait(&mut self, task: &TaskId, reason: String) {
        self.decisions.push(Decision::Wait {
            task: task.clone(),
            reason,
        });
    }

    /// Live shards of an elastic job, counting this pass's decisions.
    pub(crate) fn job_live(&self, job: &JobId) -> u32 {
        self.job_live.get(job).copied().unwrap_or(0)
    }

    /// Live shards of an elastic job per node (nodes without any absent).
    pub(crate) fn job_nodes(&self, job: &JobId) -> Option<&BTreeMap<usize, u32>> {
        self.job_on_node.get(job)
    }

    pub(crate) fn mark(&self) -> Mark {
        Mark {
            journal: self.journal.len(),
            decisions: self.decisions.len(),
        }
    }

    /// Undoes every decision made since `mark`, newest first.
    pub(crate) fn rollback(&mut self, mark: Mark) {
        while self.journal.len() > mark.journal {
            match self.journal.pop() {
                Some(Op::Place {
                    node,
                    cpu,
                    mem,
                    gpu_pos,
                    elastic_job,
                }) => {
                    let st = &mut self.nodes[node];
                    st.used_cpu -= cpu;
                    st.used_mem -= mem;
                    for pos in gpu_pos {
                        st.gpu_used[pos] = false;
                    }
                    if let Some(job) = elastic_job {
                        count_shard(&mut self.job_live, &mut self.job_on_node, &job, node, false);
                    }
                    self.rekey(node);
                }
                Some(Op::Preempt { alloc }) => {
                    let ni = self
                        .view
                        .node_index(&self.view.allocs()[alloc].node)
                        .expect("preempted allocs are on known nodes");
                    self.preempted[alloc] = false;
                    self.add_alloc_usage(alloc, ni, true);
                    self.rekey(ni);
                }
                None => break,
            }
        }
        self.decisions.truncate(mark.decisions);
    }
}

/// Counts one shard of an elastic job in (`add`) or out; empty entries are
/// removed so that counts read as absent rather than zero.
fn count_shard(
    live: &mut BTreeMap<JobId, u32>,
    on_node: &mut BTreeMap<JobId, BTreeMap<usize, u32>>,
    job: &JobId,
    ni: usize,
    add: bool,
) {
    if add {
        *live.entry(job.clone()).or_insert(0) += 1;
        *on_node
            .entry(job.clone())
            .or_default()
            .entry(ni)
            .or_insert(0) += 1;
        return;
    }
    if let Some(n) = live.get_mut(job) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            live.remove(job);
        }
    }
    if let Some(per_node) = on_node.get_mut(job) {
        if let Some(n) = per_node.get_mut(&ni) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_node.remove(&ni);
            }
        }
        if per_node.is_empty() {
            on_node.remove(job);
        }
    }
}

fn gpu_pos(view: &ClusterView, ni: usize, device: u32) -> Option<usize> {
    view.nodes()[ni]
        .gpus
        .binary_search_by_key(&device, |g| g.index)
        .ok()
}
