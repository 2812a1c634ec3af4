//! Task, allocation and job states (DESIGN §3), and the transition records
//! that make up their history.
//!
//! ```text
//! task:  pending → assigned → running → succeeded | failed | killed | lost
//!        failed | lost → pending (new attempt, restart policy allows) | dead
//!        assigned | running → stopping (the master stopped the attempt)
//!        stopping → pending (requeued) | killed (job stopped), once the
//!                   attempt's processes are gone or its node is down
//!        pending → cancelled (job stopped before the attempt ran)
//! alloc: assigned → running → succeeded | failed | killed | lost
//!        assigned → failed | killed | lost
//!        assigned | running → stopping → killed | succeeded | failed | lost
//! ```

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Why a string is not a state name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{given:?} is not a {what} state: use one of {expected}")]
pub struct UnknownState {
    pub given: String,
    pub what: &'static str,
    pub expected: &'static str,
}

macro_rules! state_enum {
    (
        $(#[$meta:meta])*
        $name:ident, $what:literal {
            $($(#[$vmeta:meta])* $variant:ident => $text:literal),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant),*
        }

        impl $name {
            /// Every state, in lifecycle order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The state's name as on the wire and in `?state=` filters.
            pub const fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text),*
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl FromStr for $name {
            type Err = UnknownState;
            fn from_str(s: &str) -> Result<Self, UnknownState> {
                match s {
                    $($text => Ok($name::$variant),)*
                    _ => Err(UnknownState {
                        given: s.to_string(),
                        what: $what,
                        expected: concat!($($text, " "),*).trim_ascii_end(),
                    }),
                }
            }
        }
    };
}

state_enum! {
    /// Where a task stands. `failed` and `lost` are followed by `pending`
    /// (a new attempt) or `dead` (the restart policy is exhausted).
    TaskState, "task" {
        /// Waiting to be placed (first attempt, restart, or after preemption).
        Pending => "pending",
        /// Placed on a node; the agent has not reported it running yet.
        Assigned => "assigned",
        Running => "running",
        /// Exited 0. (Service tasks are restarted even then.)
        Succeeded => "succeeded",
        /// Exited non-zero or could not start.
        Failed => "failed",
        /// The master stopped its attempt (preemption, drain, job update or
        /// stop) and waits for the attempt's processes to exit; its
        /// resources stay held on the node until then.
        Stopping => "stopping",
        /// Stopped on purpose (job stopped) after it had started.
        Killed => "killed",
        /// Its node went down.
        Lost => "lost",
        /// Failed or lost with no restart attempts left.
        Dead => "dead",
        /// Its job was stopped while it waited to be placed: this attempt
        /// never ran.
        Cancelled => "cancelled",
    }
}

state_enum! {
    /// Where one attempt (allocation) stands. Terminal states never change.
    AllocState, "allocation" {
        Assigned => "assigned",
        Running => "running",
        /// The master asked for it to stop; its processes have not all
        /// exited yet, so it still holds its cpu, memory and GPUs.
        Stopping => "stopping",
        Succeeded => "succeeded",
        Failed => "failed",
        Killed => "killed",
        Lost => "lost",
    }
}

state_enum! {
    /// Where a job stands.
    JobState, "job" {
        /// No task has started yet.
        Pending => "pending",
        /// At least one task is assigned or running, or waits to be restarted.
        Running => "running",
        /// Every task succeeded.
        Complete => "complete",
        /// At least one task is dead.
        Failed => "failed",
        /// Stopped by a user.
        Stopped => "stopped",
    }
}

state_enum! {
    /// Where a node stands, as the API shows it.
    NodeState, "node" {
        /// Heartbeating and accepting work.
        Ready => "ready",
        /// Missed enough heartbeats to be watched; not yet down.
        Suspect => "suspect",
        /// Accepting no new work; its allocs are being moved.
        Draining => "draining",
        /// Declared down; its allocs were marked lost and rescheduled.
        Down => "down",
    }
}

impl TaskState {
    /// Nothing more happens to the task by itself: `succeeded`, `killed`,
    /// `dead` or `cancelled`. (`failed` and `lost` lead to a new attempt or
    /// to `dead`; a service's succeeded task is restarted by the master
    /// regardless.)
    pub const fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Killed | TaskState::Dead | TaskState::Cancelled
        )
    }
}

impl AllocState {
    /// `succeeded`, `failed`, `killed` or `lost`: the attempt is over for good.
    pub const fn is_terminal(self) -> bool {
        !matches!(
            self,
            AllocState::Assigned | AllocState::Running | AllocState::Stopping
        )
    }

    /// Whether an allocation in this state may move to `next`:
    /// assigned → running | succeeded | failed | killed | lost (a task may
    /// start and end between two agent reports);
    /// running → succeeded | failed | killed | lost; assigned | running →
    /// stopping (the master's decision, never an agent's report);
    /// stopping → succeeded | failed | killed | lost (a late `running`
    /// report is ignored); terminal states never change. Staying in the
    /// same state is not a transition (`false`); callers treat a repeated
    /// report as a no-op.
    pub const fn can_transition_to(self, next: AllocState) -> bool {
        use AllocState::*;
        matches!(
            (self, next),
            (
                Assigned,
                Running | Stopping | Succeeded | Failed | Killed | Lost
            ) | (Running | Stopping, Succeeded | Failed | Killed | Lost)
                | (Running, Stopping)
        )
    }

    /// The task state an allocation state implies, for a task whose latest
    /// attempt is this allocation (before any restart decision).
    pub const fn task_state(self) -> TaskState {
        match self {
            AllocState::Assigned => TaskState::Assigned,
            AllocState::Running => TaskState::Running,
            AllocState::Stopping => TaskState::Stopping,
            AllocState::Succeeded => TaskState::Succeeded,
            AllocState::Failed => TaskState::Failed,
            AllocState::Killed => TaskState::Killed,
            AllocState::Lost => TaskState::Lost,
        }
    }
}

impl JobState {
    /// `complete`, `failed` or `stopped`.
    pub const fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Complete | JobState::Failed | JobState::Stopped
        )
    }
}

/// One entry in the history of a task, an allocation or a job: the state
/// entered, why, and when (milliseconds since the Unix epoch, master clock).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct Transition<S> {
    pub state: S,
    /// Short and human: "submitted", "placed on node-3", "exit code 1",
    /// "node node-3 down", "preempted by render/2".
    pub reason: Reason,
    pub at_unix_ms: u64,
}

/// Why a transition happened. A master holds millions of these and most say
/// the same few things ("submitted", "exit code 0", "placed on node-3 by
/// least-loaded"), so equal reasons share one allocation (up to
/// [`Reason::INTERNED_MAX`] distinct ones; past that, each has its own).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Reason(Arc<str>);

impl Reason {
    /// How many distinct reasons are shared before new ones stop being.
    pub const INTERNED_MAX: usize = 1 << 16;

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn interned(s: &str) -> Reason {
        static TABLE: OnceLock<Mutex<HashSet<Arc<str>>>> = OnceLock::new();
        let mut table = TABLE
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(shared) = table.get(s) {
            return Reason(Arc::clone(shared));
        }
        let new: Arc<str> = Arc::from(s);
        if table.len() < Self::INTERNED_MAX {
            table.insert(Arc::clone(&new));
        }
        Reason(new)
    }
}

impl std::ops::Deref for Reason {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Reason {
    fn from(s: &str) -> Self {
        Reason::interned(s)
    }
}

impl From<String> for Reason {
    fn from(s: String) -> Self {
        Reason::interned(&s)
    }
}

impl PartialEq<str> for Reason {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Reason {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl Serialize for Reason {
    fn serialize<Ser: serde::Serializer>(&self, s: Ser) -> Result<Ser::Ok, Ser::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Reason {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Ok(Reason::interned(&s))
    }
}

impl<S> Transition<S> {
    pub fn new(state: S, reason: impl Into<Reason>, at_unix_ms: u64) -> Self {
        Transition {
            state,
            reason: reason.into(),
            at_unix_ms,
        }
    }
}

pub type TaskTransition = Transition<TaskState>;
pub type AllocTransition = Transition<AllocState>;
pub type JobTransition = Transition<JobState>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_reasons_share_one_allocation_and_read_back_as_written() {
        let a = Reason::from("placed on node-3 by least-loaded");
        let b = Reason::from(String::from("placed on node-3 by least-loaded"));
        assert!(Arc::ptr_eq(&a.0, &b.0));
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, "\"placed on node-3 by least-loaded\"");
        let c: Reason = serde_json::from_str(&json).unwrap();
        assert!(Arc::ptr_eq(&a.0, &c.0));
        assert_eq!(c, "placed on node-3 by least-loaded");
        assert_ne!(Reason::from("exit code 1"), a);
    }

    #[test]
    fn states_serialize_as_snake_case_names_and_parse_back() {
        for s in TaskState::ALL {
            let json = serde_json::to_string(s).unwrap();
            assert_eq!(json, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<TaskState>(&json).unwrap(), *s);
            assert_eq!(s.name().parse::<TaskState>(), Ok(*s));
        }
        for s in AllocState::ALL {
            assert_eq!(serde_json::to_string(s).unwrap(), format!("\"{s}\""));
            assert_eq!(s.name().parse::<AllocState>(), Ok(*s));
        }
        for s in JobState::ALL {
            assert_eq!(serde_json::to_string(s).unwrap(), format!("\"{s}\""));
            assert_eq!(s.name().parse::<JobState>(), Ok(*s));
        }
        assert_eq!(TaskState::ALL.len(), 10);
        assert_eq!(AllocState::ALL.len(), 7);
        assert_eq!(JobState::ALL.len(), 5);
    }

    #[test]
    fn an_unknown_state_name_lists_the_known_ones() {
        let err = "done".parse::<JobState>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"done\" is not a job state: use one of pending running complete failed stopped"
        );
        assert!(serde_json::from_str::<AllocState>("\"pending\"").is_err());
    }

    #[test]
    fn terminal_states_are_the_ones_nothing_follows() {
        let terminal: Vec<_> = TaskState::ALL.iter().filter(|s| s.is_terminal()).collect();
        assert_eq!(
            terminal,
            [
                &TaskState::Succeeded,
                &TaskState::Killed,
                &TaskState::Dead,
                &TaskState::Cancelled
            ]
        );
        let terminal: Vec<_> = AllocState::ALL
            .iter()
            .filter(|s| s.is_terminal())
            .map(|s| s.name())
            .collect();
        assert_eq!(terminal, ["succeeded", "failed", "killed", "lost"]);
        let terminal: Vec<_> = JobState::ALL
            .iter()
            .filter(|s| s.is_terminal())
            .map(|s| s.name())
            .collect();
        assert_eq!(terminal, ["complete", "failed", "stopped"]);
    }

    #[test]
    fn alloc_transitions_follow_the_lifecycle_and_terminal_states_never_change() {
        use AllocState::*;
        let allowed = [
            (Assigned, Running),
            (Assigned, Succeeded),
            (Assigned, Failed),
            (Assigned, Killed),
            (Assigned, Lost),
            (Assigned, Stopping),
            (Running, Succeeded),
            (Running, Failed),
            (Running, Killed),
            (Running, Lost),
            (Running, Stopping),
            (Stopping, Succeeded),
            (Stopping, Failed),
            (Stopping, Killed),
            (Stopping, Lost),
        ];
        for &from in AllocState::ALL {
            for &to in AllocState::ALL {
                assert_eq!(
                    from.can_transition_to(to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
            if from.is_terminal() {
                assert!(AllocState::ALL
                    .iter()
                    .all(|&to| !from.can_transition_to(to)));
            }
        }
        assert!(
            Assigned.can_transition_to(Succeeded),
            "a task may start and end between two reports"
        );
    }

    #[test]
    fn alloc_states_map_onto_the_task_state_of_the_same_name() {
        for s in AllocState::ALL {
            assert_eq!(s.task_state().name(), s.name());
        }
    }

    #[test]
    fn transitions_record_state_reason_and_time_on_the_wire() {
        let t = Transition::new(TaskState::Pending, "preempted", 1_700_000_000_123);
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"state": "pending", "reason": "preempted", "at_unix_ms": 1_700_000_000_123u64})
        );
        let back: TaskTransition = serde_json::from_value(json).unwrap();
        assert_eq!(back, t);
    }
}
