//! Liveness: nodes whose heartbeats stop are suspect, then down.

use std::sync::Arc;
use std::time::Duration;

use drover_api::NodeId;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::lifecycle;
use crate::state::Txn;

use super::{CommitError, Master};

impl Master {
    /// Checks heartbeats every half interval until `shutdown`.
    pub async fn run_liveness(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.settings.heartbeat_interval / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => break,
            }
            if *shutdown.borrow() {
                break;
            }
            if let Err(e) = self.check_liveness().await {
                tracing::warn!(error = %e, "liveness changes not committed; retrying next tick");
            }
        }
    }

    /// Marks silent nodes suspect, then down (their allocs lost), and
    /// enforces drain deadlines. Returns the nodes declared down.
    pub async fn check_liveness(&self) -> Result<Vec<NodeId>, CommitError> {
        let now = self.clock.now();
        let now_ms = self.clock.wall_ms();
        let mut cluster = self.lock().await;
        let suspect_after = self.settings.heartbeat_interval * self.settings.suspect_after_missed;
        let mut candidates = Vec::new();
        let (mut alive, mut quiet) = (0usize, 0usize);
        {
            let seen = self.last_seen.lock().unwrap_or_else(|e| e.into_inner());
            let ids: Vec<NodeId> = cluster
                .nodes
                .values()
                .filter(|n| !n.down)
                .map(|n| n.id.clone())
                .collect();
            for id in ids {
                alive += 1;
                let silent = seen
                    .get(&id)
                    .map_or(Duration::ZERO, |t| now.saturating_duration_since(*t));
                let suspect = silent > suspect_after;
                cluster.set_suspect(&id, suspect);
                quiet += usize::from(suspect);
                if silent > self.settings.node_timeout {
                    candidates.push(id);
                }
            }
        }
        let down = self.limit_mass_failure(candidates, quiet, alive, now);
        let (mut lost, mut drained) = (0u64, 0u64);
        let changes = {
            let mut txn = Txn::new(&cluster);
            for node in &down {
                lost += txn.live_alloc_ids_on(node).len() as u64;
                lifecycle::node_down(&mut txn, node, now_ms);
            }
            let overdue: Vec<NodeId> = cluster
                .nodes
                .values()
                .filter(|n| !n.down && n.drain.as_ref().is_some_and(|d| d.deadline_ms <= now_ms))
                .map(|n| n.id.clone())
                .collect();
            for node in overdue {
                drained += lifecycle::drain(&mut txn, &node, true, now_ms);
            }
            txn.into_changes()
        };
        let changed = !changes.is_empty();
        let durable = self.stage(&mut cluster, changes);
        drop(cluster);
        durable.wait().await?;
        self.metrics
            .reschedules
            .with_label_values(&["lost"])
            .inc_by(lost);
        self.metrics
            .reschedules
            .with_label_values(&["drained"])
            .inc_by(drained);
        for node in &down {
            self.metrics.node_failures.inc();
            tracing::warn!(node = %node, timeout = ?self.settings.node_timeout, "node down: no heartbeat");
        }
        if changed {
            self.wake_scheduler();
        }
        Ok(down)
    }

    /// If more than half of the live nodes went silent at once, the master
    /// is more likely cut off than they are dead: from then until no node
    /// is left past its timeout (each marked down, or back), only a
    /// trickle is marked down, `max_down_per_second`. "At once" counts the
    /// `quiet` (suspect) nodes, not only those past `node_timeout`: nodes
    /// cut off together reach their timeouts a heartbeat's phase apart,
    /// and the first would otherwise go down before the rest were counted.
    fn limit_mass_failure(
        &self,
        mut candidates: Vec<NodeId>,
        quiet: usize,
        alive: usize,
        now: Instant,
    ) -> Vec<NodeId> {
        let mut s = self.mass_silence.lock().unwrap_or_else(|e| e.into_inner());
        let rate = f64::from(self.settings.max_down_per_second.max(1));
        if s.episode.is_none() {
            // Past node_timeout is past the suspect mark too; the max only
            // guards settings made by hand (tests) that order them otherwise.
            let silent = quiet.max(candidates.len());
            if candidates.is_empty() || silent * 2 <= alive || alive < 2 {
                return candidates;
            }
            tracing::error!(
                silent,
                alive,
                "more than half of the nodes went silent at once; this master may be the one \
                 cut off; marking nodes down at most {rate}/s until they are all down or back"
            );
            s.episode = Some(Episode { silent, downed: 0 });
        }
        if candidates.is_empty() {
            if let Some(e) = s.episode.take() {
                tracing::warn!(
                    silent = e.silent,
                    marked_down = e.downed,
                    "mass silence over: every silent node is down or back"
                );
            }
            self.metrics.nodes_down_deferred.set(0);
            return candidates;
        }
        let elapsed = now.saturating_duration_since(s.refilled).as_secs_f64();
        s.budget = (s.budget + elapsed * rate).min(rate);
        s.refilled = now;
        let allowed = (s.budget.floor() as usize).min(candidates.len());
        let deferred = candidates.len() - allowed;
        candidates.truncate(allowed);
        s.budget -= allowed as f64;
        if let Some(e) = s.episode.as_mut() {
            e.downed += allowed;
        }
        self.metrics.nodes_down_deferred.set(deferred as i64);
        candidates
    }
}

/// The token bucket of [`Master::limit_mass_failure`], and the silence it
/// is limiting, if any.
#[derive(Debug)]
pub(super) struct MassSilence {
    budget: f64,
    refilled: Instant,
    episode: Option<Episode>,
}

impl MassSilence {
    pub(super) fn new(now: Instant) -> MassSilence {
        MassSilence {
            budget: 0.0,
            refilled: now,
            episode: None,
        }
    }
}

#[derive(Debug)]
struct Episode {
    /// Nodes past their timeout when it began.
    silent: usize,
    downed: usize,
}
