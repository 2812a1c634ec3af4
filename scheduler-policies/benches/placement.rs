//! Placement throughput of each policy: `10k` tasks on `1k` nodes and `100k`
//! tasks on `10k` nodes, one pass over an empty cluster, all tasks fitting.
//! Criterion reports the rate as elements/s, where an element is one task
//! placed. Run: `cargo bench -p scheduler-policies --bench placement`.
//! In test mode (`cargo test --benches`) each case runs once as a smoke test.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use scheduler_policies::registry;
use scheduler_policies::testkit::{job, node, GIB};
use scheduler_policies::verify::verify;
use scheduler_policies::{ClusterView, PolicyKind, TaskRequest};

/// `nodes` nodes of 32 cores and 128 GiB, every tenth with 4 GPUs, in three
/// zones.
fn cluster(nodes: usize) -> ClusterView {
    let zones = ["a", "b", "c"];
    ClusterView::new(
        (0..nodes)
            .map(|i| {
                let mut b = node(&format!("node-{i:05}"))
                    .cpu(32_000)
                    .mem(128 * GIB)
                    .label("zone", zones[i % 3]);
                if i % 10 == 0 {
                    b = b.gpus("A100", 4);
                }
                b.build()
            })
            .collect(),
        vec![],
    )
}

/// `tasks` tasks in jobs of 100, of mixed sizes and priorities; one job in
/// 40 needs a GPU, one in 10 is pinned to a zone. Elastic jobs for the
/// elastic-sharding policy.
fn queue(tasks: usize, elastic: bool) -> Vec<TaskRequest> {
    let per_job = 100;
    (0..tasks.div_ceil(per_job))
        .flat_map(|j| {
            let mut b = job(&format!("job-{j:05}"))
                .priority((j % 7 * 10) as u8)
                .submitted(j as u64)
                .cpu(250 * (1 + j as u64 % 4))
                .mem(GIB / 2 * (1 + j as u64 % 3));
            if j % 40 == 0 {
                b = b.gpus(1);
            }
            if j % 10 == 5 {
                b = b.label("zone", "b");
            }
            if elastic {
                b = b.elastic(10, per_job as u32);
            }
            b.tasks(per_job as u32)
        })
        .take(tasks)
        .collect()
}

fn placement(c: &mut Criterion) {
    for (nodes, tasks) in [(1_000, 10_000), (10_000, 100_000)] {
        let view = cluster(nodes);
        let mut group = c.benchmark_group(format!("place_{tasks}_tasks_on_{nodes}_nodes"));
        group.sample_size(10);
        group.throughput(Throughput::Elements(tasks as u64));
        for kind in PolicyKind::ALL {
            let q = queue(tasks, kind == PolicyKind::ElasticSharding);
            // Every case must place every task; a bench of a broken policy is no bench.
            let decisions = registry::build(kind).schedule(&view, &q);
            let out = verify(&view, &q, &decisions).expect("benchmark decisions are valid");
            assert_eq!(out.placed.len(), tasks, "{kind} left tasks waiting");
            group.bench_with_input(BenchmarkId::from_parameter(kind), &q, |b, q| {
                b.iter(|| registry::build(kind).schedule(&view, q))
            });
        }
        group.finish();
    }
}

/// The priority policy on a full cluster: every one of `tasks` high-priority
/// tasks must preempt a low-priority alloc. Victim search looks at every
/// node, so this is the policy's expensive path.
fn preemption(c: &mut Criterion) {
    let (nodes, tasks) = (1_000, 1_000);
    let low = job("filler").priority(10).cpu(4_000).mem(16 * GIB);
    let names: Vec<String> = (0..nodes).map(|i| format!("node-{i:05}")).collect();
    let view = ClusterView::new(
        names
            .iter()
            .map(|n| node(n).cpu(32_000).mem(128 * GIB).build())
            .collect(),
        (0..nodes * 8)
            .map(|i| low.alloc_on(i as u32, &names[i / 8], &[]))
            .collect(),
    );
    let q = job("urgent")
        .priority(90)
        .cpu(4_000)
        .mem(16 * GIB)
        .tasks(tasks as u32);
    let decisions = registry::build(PolicyKind::Priority).schedule(&view, &q);
    let out = verify(&view, &q, &decisions).expect("benchmark decisions are valid");
    assert_eq!((out.placed.len(), out.preempted.len()), (tasks, tasks));
    let mut group = c.benchmark_group(format!("preempt_{tasks}_tasks_on_{nodes}_full_nodes"));
    group.sample_size(10);
    group.throughput(Throughput::Elements(tasks as u64));
    group.bench_function("priority", |b| {
        b.iter(|| registry::build(PolicyKind::Priority).schedule(&view, &q))
    });
    group.finish();
}

criterion_group!(benches, placement, preemption);
criterion_main!(benches);
