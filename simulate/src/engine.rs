//! The event loop: one run of a workload on a cluster under one policy,
//! through `drover_master::harness`, on virtual time. The master's own
//! code decides everything (placements, preemptions, elastic shard counts,
//! requeues after node failures); this loop only plays the agents (start
//! what is placed, stop what is stopped, report exits when their durations
//! are up) and the faults, and records what happened.
//!
//! Deterministic: events are ordered by (time, sequence number), the
//! master's policies are deterministic, and durations are drawn from the
//! seed; nothing reads the wall clock.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Duration;

use drover_api::protocol::{GpuDevice, NodeResources};
use drover_api::{AllocId, AllocState, NodeId, PolicyKind, TaskId};
use drover_master::core::Settings;
use drover_master::harness::Harness;

use crate::input::{node_ids, Faults, NodeClass, WorkloadJob};
use crate::record::{Amounts, RunRecord, Sample, TaskOutcome};
use crate::SimError;

/// Which policy places the jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyChoice {
    /// Every job by this policy, whatever its spec says (elastic jobs are
    /// always placed by elastic-sharding, as in a real cluster).
    Every(PolicyKind),
    /// Each job by its own `policy`, the rest by this default.
    AsSubmitted(PolicyKind),
}

impl PolicyChoice {
    pub fn label(&self) -> String {
        match self {
            PolicyChoice::Every(p) => p.name().to_string(),
            PolicyChoice::AsSubmitted(p) => format!("as-submitted (default {})", p.name()),
        }
    }
}

/// What a run replays.
#[derive(Debug, Clone, Copy)]
pub struct Setup<'a> {
    pub workload: &'a [WorkloadJob],
    pub cluster: &'a [NodeClass],
    pub faults: &'a Faults,
    pub seed: u64,
    /// Events are handled in rounds of this much virtual time: what falls
    /// due within a round is reported at its end, in one heartbeat per
    /// node, and one pass follows, as agents batch their reports into
    /// heartbeats and the master its work into passes. Shorter is finer
    /// and slower.
    pub round: Duration,
}

/// How far the loop waits, with nothing running and tasks still waiting,
/// for something to change (restart delays) before it calls them stuck.
const IDLE_ROUNDS: u32 = 3;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Submit(usize),
    Finish(NodeId, AllocId),
    Fail(usize),
    Recover(usize),
    Liveness,
    Tick,
}

struct Loop<'a> {
    setup: Setup<'a>,
    h: Harness,
    nodes: Vec<(NodeId, usize)>,
    up: Vec<bool>,
    heap: BinaryHeap<Reverse<(u64, u64, Event)>>,
    seq: u64,
    /// Node index by id.
    index: BTreeMap<NodeId, usize>,
    /// Allocs running on the virtual agents, and where.
    running: BTreeMap<AllocId, NodeId>,
    outcomes: BTreeMap<TaskId, TaskOutcome>,
    durations: BTreeMap<String, usize>,
    samples: Vec<Sample>,
    capacity: Amounts,
    /// Nodes the master has marked down (and not seen back).
    down: Vec<bool>,
    /// The capacity of the nodes the master counts as up.
    up_capacity: Amounts,
}

/// Runs `setup` once under `choice`.
pub fn run(setup: Setup<'_>, choice: PolicyChoice) -> Result<RunRecord, SimError> {
    let rt = Harness::runtime().map_err(|e| SimError::Engine(format!("a runtime: {e}")))?;
    rt.block_on(run_async(setup, choice))
}

fn engine<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> SimError + '_ {
    move |e| SimError::Engine(format!("{what}: {e}"))
}

async fn run_async(setup: Setup<'_>, choice: PolicyChoice) -> Result<RunRecord, SimError> {
    let default_policy = match choice {
        PolicyChoice::Every(p) | PolicyChoice::AsSubmitted(p) => p,
    };
    let settings = Settings {
        default_policy,
        ..Settings::default()
    };
    let h = Harness::new(settings)
        .await
        .map_err(engine("the harness"))?;
    let ids = node_ids(setup.cluster);
    let mut nodes = Vec::with_capacity(ids.len());
    let mut capacity = Amounts::default();
    for (id, class) in &ids {
        let node = NodeId::new(id.as_str()).map_err(engine("a node id"))?;
        let c = &setup.cluster[*class];
        h.add_node(&node, resources(c), c.labels.clone())
            .await
            .map_err(engine("registering a node"))?;
        add(&mut capacity, amounts(c), true);
        nodes.push((node, *class));
    }
    let mut l = Loop {
        setup,
        h,
        up: vec![true; nodes.len()],
        index: nodes
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.clone(), i))
            .collect(),
        nodes,
        heap: BinaryHeap::new(),
        seq: 0,
        running: BTreeMap::new(),
        outcomes: BTreeMap::new(),
        durations: BTreeMap::new(),
        samples: Vec::new(),
        capacity,
        down: vec![false; ids.len()],
        up_capacity: capacity,
    };
    for (i, job) in setup.workload.iter().enumerate() {
        l.durations.insert(job.spec.name.to_string(), i);
        l.push(secs_to_ms(job.submit_s), Event::Submit(i));
    }
    let by_id: BTreeMap<&str, usize> = ids
        .iter()
        .enumerate()
        .map(|(i, (id, _))| (id.as_str(), i))
        .collect();
    for f in &setup.faults.events {
        let Some(&i) = by_id.get(f.node.as_str()) else {
            return Err(SimError::Engine(format!(
                "a fault names node {}, which the cluster does not have",
                f.node
            )));
        };
        l.push(secs_to_ms(f.at_s), Event::Fail(i));
        if let Some(after) = f.recover_after_s {
            l.push(secs_to_ms(f.at_s + after), Event::Recover(i));
        }
    }
    l.run(choice).await?;
    let mut record = l.finish().await?;
    record.policy = choice.label();
    Ok(record)
}

fn secs_to_ms(s: f64) -> u64 {
    (s.max(0.0) * 1000.0).round() as u64
}

/// What one node of class `c` offers.
fn amounts(c: &NodeClass) -> Amounts {
    Amounts {
        cpu_millis: c.cpu_millis,
        memory_bytes: c.memory_bytes,
        gpus: u64::from(c.gpus),
    }
}

/// `total` plus `a`, or less it.
fn add(total: &mut Amounts, a: Amounts, plus: bool) {
    if plus {
        total.cpu_millis += a.cpu_millis;
        total.memory_bytes += a.memory_bytes;
        total.gpus += a.gpus;
    } else {
        total.cpu_millis -= a.cpu_millis;
        total.memory_bytes -= a.memory_bytes;
        total.gpus -= a.gpus;
    }
}

fn resources(c: &NodeClass) -> NodeResources {
    NodeResources {
        cpu_millis: c.cpu_millis,
        memory_bytes: c.memory_bytes,
        gpus: (0..c.gpus)
            .map(|i| GpuDevice {
                index: i,
                uuid: format!("GPU-sim-{i}"),
                model: c.gpu_model.clone(),
                memory_bytes: 80 << 30,
            })
            .collect(),
    }
}

impl Loop<'_> {
    fn push(&mut self, at_ms: u64, e: Event) {
        let round = (self.setup.round.as_millis() as u64).max(1);
        let at_ms = at_ms.div_ceil(round) * round;
        self.seq += 1;
        self.heap.push(Reverse((at_ms, self.seq, e)));
    }

    async fn run(&mut self, choice: PolicyChoice) -> Result<(), SimError> {
        let mut idle = 0;
        loop {
            let Some(Reverse((at, _, _))) = self.heap.peek() else {
                // Nothing due: if tasks wait with nothing running, give the
                // master a few pass intervals (restart delays), then stop.
                let waiting = !self.h.master().lock().await.pending.is_empty();
                if waiting && self.running.is_empty() && idle < IDLE_ROUNDS {
                    idle += 1;
                    let at = self.h.now_ms() + 1000;
                    self.push(at, Event::Tick);
                    continue;
                }
                return Ok(());
            };
            let at = *at;
            let now = self.h.now_ms();
            if at > now {
                self.h.advance(Duration::from_millis(at - now)).await;
            }
            let mut exits: BTreeMap<NodeId, Vec<(AllocId, AllocState, Option<i32>)>> =
                BTreeMap::new();
            while let Some(Reverse((t, _, _))) = self.heap.peek() {
                if *t > at {
                    break;
                }
                let Some(Reverse((_, _, event))) = self.heap.pop() else {
                    break;
                };
                match event {
                    Event::Submit(i) => {
                        idle = 0;
                        self.submit(i, choice).await?;
                    }
                    Event::Finish(node, alloc) => {
                        if self.running.remove(&alloc).is_some() {
                            exits.entry(node).or_default().push((
                                alloc,
                                AllocState::Succeeded,
                                Some(0),
                            ));
                        }
                    }
                    Event::Fail(i) => self.fail(i, at),
                    Event::Recover(i) => self.recover(i).await?,
                    Event::Liveness => self.liveness(at).await?,
                    Event::Tick => {}
                }
            }
            for (node, changes) in exits {
                self.report(&node, &changes).await?;
            }
            self.schedule().await?;
            self.sample().await;
        }
    }

    async fn submit(&mut self, i: usize, choice: PolicyChoice) -> Result<(), SimError> {
        let job = &self.setup.workload[i];
        let mut spec = job.spec.clone();
        if matches!(choice, PolicyChoice::Every(_)) {
            spec.policy = None;
        }
        let name = spec.name.to_string();
        let tasks = spec.task_count();
        let now_s = self.h.now_ms() as f64 / 1000.0;
        let (priority, elastic) = (spec.priority, spec.elastic.is_some());
        match self.h.submit(spec).await {
            Ok(_) => {
                for index in 0..tasks {
                    self.outcomes.insert(
                        job.spec.name.task(index),
                        TaskOutcome {
                            job: name.clone(),
                            index,
                            priority,
                            elastic,
                            submitted_s: now_s,
                            started_s: None,
                            finished_s: None,
                            never_ran: None,
                        },
                    );
                }
                Ok(())
            }
            Err(e) => Err(SimError::Engine(format!("submitting {name}: {e}"))),
        }
    }

    /// The machine dies: its processes with it (nothing more is reported
    /// from it), and the master hears nothing more.
    fn fail(&mut self, i: usize, at: u64) {
        if !self.up[i] {
            return;
        }
        self.up[i] = false;
        let node = self.nodes[i].0.clone();
        // Finish events of its allocs will find them gone.
        self.running.retain(|_, n| *n != node);
        let timeout = self.h.master().settings.node_timeout;
        self.push(at + timeout.as_millis() as u64 + 100, Event::Liveness);
    }

    async fn recover(&mut self, i: usize) -> Result<(), SimError> {
        if self.up[i] {
            return Ok(());
        }
        self.up[i] = true;
        let (node, class) = self.nodes[i].clone();
        let c = &self.setup.cluster[class];
        self.h
            .add_node(&node, resources(c), c.labels.clone())
            .await
            .map_err(engine("a node coming back"))?;
        if std::mem::take(&mut self.down[i]) {
            self.count_capacity(class, true);
        }
        Ok(())
    }

    fn count_capacity(&mut self, class: usize, up: bool) {
        add(
            &mut self.up_capacity,
            amounts(&self.setup.cluster[class]),
            up,
        );
    }

    async fn liveness(&mut self, at: u64) -> Result<(), SimError> {
        let alive: Vec<NodeId> = self
            .nodes
            .iter()
            .zip(&self.up)
            .filter(|(_, up)| **up)
            .map(|((n, _), _)| n.clone())
            .collect();
        self.h.keep_alive(&alive).await;
        let downed = self
            .h
            .check_liveness()
            .await
            .map_err(engine("the liveness check"))?;
        for node in downed {
            if let Some(&i) = self.index.get(&node) {
                if !std::mem::replace(&mut self.down[i], true) {
                    self.count_capacity(self.nodes[i].1, false);
                }
            }
        }
        // A mass silence is marked down a node a second: come back until
        // every dead node is down.
        let c = self.h.master().lock().await;
        let waiting = self
            .nodes
            .iter()
            .zip(&self.up)
            .any(|((n, _), up)| !*up && c.nodes.get(n).is_some_and(|r| !r.down));
        drop(c);
        if waiting {
            self.push(at + 1000, Event::Liveness);
        }
        Ok(())
    }

    async fn report(
        &self,
        node: &NodeId,
        changes: &[(AllocId, AllocState, Option<i32>)],
    ) -> Result<(), SimError> {
        self.h
            .report(node, changes)
            .await
            .map_err(engine("an agent's report"))
    }

    /// Passes until the master has nothing more to start or stop now.
    async fn schedule(&mut self) -> Result<(), SimError> {
        loop {
            self.h.pass().await.map_err(engine("a pass"))?;
            let orders = self.h.orders().await;
            let live_start: Vec<_> = orders
                .start
                .into_iter()
                .filter(|(n, _)| self.is_up(n))
                .collect();
            let live_stop: Vec<_> = orders
                .stop
                .into_iter()
                .filter(|(n, _)| self.is_up(n))
                .collect();
            if live_start.is_empty() && live_stop.is_empty() {
                return Ok(());
            }
            // Only what stopped makes room for another pass in this round:
            // a pass places all that fits.
            let again = !live_stop.is_empty();
            let now = self.h.now_ms();
            let mut by_node: BTreeMap<NodeId, Vec<(AllocId, AllocState, Option<i32>)>> =
                BTreeMap::new();
            for (node, alloc) in live_stop {
                self.running.remove(&alloc);
                by_node
                    .entry(node)
                    .or_default()
                    .push((alloc, AllocState::Killed, None));
            }
            for (node, alloc) in live_start {
                let task = alloc.task.clone();
                let seconds = self.duration_of(&task);
                if let Some(o) = self.outcomes.get_mut(&task) {
                    o.started_s.get_or_insert(now as f64 / 1000.0);
                }
                self.running.insert(alloc.clone(), node.clone());
                self.push(
                    now + secs_to_ms(seconds).max(1),
                    Event::Finish(node.clone(), alloc.clone()),
                );
                by_node
                    .entry(node)
                    .or_default()
                    .push((alloc, AllocState::Running, None));
            }
            for (node, changes) in by_node {
                self.report(&node, &changes).await?;
            }
            if !again {
                return Ok(());
            }
        }
    }

    fn is_up(&self, node: &NodeId) -> bool {
        self.index.get(node).is_some_and(|&i| self.up[i])
    }

    fn duration_of(&self, task: &TaskId) -> f64 {
        let job = self
            .durations
            .get(task.job.as_str())
            .map(|&i| &self.setup.workload[i]);
        job.map_or(1.0, |j| {
            j.duration
                .sample(self.setup.seed, task.job.as_str(), task.index)
        })
    }

    async fn sample(&mut self) {
        let c = self.h.master().lock().await;
        // Down nodes hold nothing: their allocs were lost.
        let mut held = Amounts::default();
        for h in c.held_by_node.values() {
            held.cpu_millis += h.cpu_millis;
            held.memory_bytes += h.memory_bytes;
            held.gpus += h.gpus;
        }
        let sample = Sample {
            at_s: self.h.now_ms() as f64 / 1000.0,
            queued: c.pending.len() as u64,
            held,
            capacity: self.up_capacity,
        };
        drop(c);
        // Several rounds at one instant: the last one stands.
        if self.samples.last().is_some_and(|s| s.at_s == sample.at_s) {
            self.samples.pop();
        }
        self.samples.push(sample);
    }

    async fn finish(self) -> Result<RunRecord, SimError> {
        let c = self.h.master().lock().await;
        let mut tasks = Vec::with_capacity(self.outcomes.len());
        for (id, mut o) in self.outcomes {
            match c.tasks.get(&id) {
                Some(t) if t.state == drover_api::TaskState::Succeeded => {
                    o.finished_s = t.history.last().map(|h| h.at_unix_ms as f64 / 1000.0);
                }
                Some(t) if o.started_s.is_none() => {
                    o.never_ran = Some(
                        c.wait_reasons
                            .get(&id)
                            .or_else(|| c.job_wait_reasons.get(&id.job))
                            .cloned()
                            .unwrap_or_else(|| t.reason().to_string()),
                    );
                }
                _ => {}
            }
            tasks.push(o);
        }
        let m = &self.h.master().metrics;
        Ok(RunRecord {
            policy: String::new(),
            capacity: self.capacity,
            samples: self.samples,
            tasks,
            preemptions: m.preemptions.get(),
            rescheduled: m.reschedules.with_label_values(&["lost"]).get(),
            end_s: self.h.now_ms() as f64 / 1000.0,
        })
    }
}
