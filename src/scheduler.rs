//! Slots for experiments: how many runs train at once, and which GPU each gets. A run waits in a
//! first-come queue until a slot is free; the slot it gets names its GPU (one per slot when the machine
//! has GPUs), which the run's train and embed phases are limited to ([`crate::sandbox::gpus`]).
//!
//! Not yet wired in: `run_experiment` still claims its single in-flight slot (service/run_experiment.rs).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::sandbox::gpus::Gpus;

/// One place a run can train in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub index: usize,
    /// The GPU (device minor) of this slot; `None` on a machine without GPUs.
    pub gpu: Option<u32>,
}

impl Slot {
    /// The GPUs a run in this slot may use.
    pub fn gpus(&self) -> Gpus {
        match self.gpu {
            Some(g) => Gpus::Only(vec![g]),
            None => Gpus::none(),
        }
    }
}

/// The slots of a machine: `configured` of them (0 = one per GPU, or 1 without GPUs), handed out round
/// the `gpus` (device minors). More slots than GPUs would share a device, so they are refused.
pub fn slots(configured: usize, gpus: &[u32]) -> anyhow::Result<Vec<Slot>> {
    let n = match configured {
        0 => gpus.len().max(1),
        n => n,
    };
    if !gpus.is_empty() && n > gpus.len() {
        anyhow::bail!(
            "[scheduler] slots = {n} but this machine has {} GPU(s): each run gets a GPU of its own; set slots to at most {}",
            gpus.len(),
            gpus.len()
        );
    }
    Ok((0..n).map(|index| Slot { index, gpu: gpus.get(index).copied() }).collect())
}

#[derive(Debug, Default)]
struct State {
    free: Vec<Slot>,
    /// Run ids waiting for a slot, first come first served.
    queue: VecDeque<String>,
}

/// The slots and the queue in front of them.
#[derive(Debug, Clone)]
pub struct Scheduler {
    state: Arc<Mutex<State>>,
    freed: Arc<Notify>,
    total: usize,
}

/// A slot held by a run; back in the pool when dropped.
#[derive(Debug)]
pub struct Held {
    pub slot: Slot,
    scheduler: Scheduler,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut st = self.scheduler.state.lock().unwrap_or_else(|e| e.into_inner());
        st.free.push(self.slot.clone());
        st.free.sort_by_key(|s| s.index);
        drop(st);
        self.scheduler.freed.notify_waiters();
    }
}

impl Scheduler {
    pub fn new(slots: Vec<Slot>) -> Self {
        let total = slots.len();
        Self {
            state: Arc::new(Mutex::new(State { free: slots, queue: VecDeque::new() })),
            freed: Arc::default(),
            total,
        }
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// Puts `run` in the queue; its 1-based position (1: next to get a slot).
    pub fn enqueue(&self, run: &str) -> usize {
        let mut st = self.lock();
        st.queue.push_back(run.to_string());
        st.queue.len()
    }

    /// `run`'s 1-based place in the queue, if it is waiting.
    pub fn position(&self, run: &str) -> Option<usize> {
        self.lock().queue.iter().position(|r| r == run).map(|i| i + 1)
    }

    /// Runs waiting for a slot, in order.
    pub fn queued(&self) -> Vec<String> {
        self.lock().queue.iter().cloned().collect()
    }

    /// Takes `run` out of the queue (cancelled before it started); whether it was there.
    pub fn dequeue(&self, run: &str) -> bool {
        let mut st = self.lock();
        let before = st.queue.len();
        st.queue.retain(|r| r != run);
        let gone = st.queue.len() != before;
        drop(st);
        // The runs behind it may now be first.
        self.freed.notify_waiters();
        gone
    }

    /// Waits until `run` (enqueued) is first in the queue and a slot is free, and takes that slot
    /// (the lowest-numbered free one). Cancel-safe: dropping the future leaves the run queued; call
    /// [`Scheduler::dequeue`] to give up its place.
    pub async fn acquire(&self, run: &str) -> Held {
        loop {
            let notified = self.freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.lock();
                if st.queue.front().map(String::as_str) == Some(run) && !st.free.is_empty() {
                    st.queue.pop_front();
                    let slot = st.free.remove(0);
                    drop(st);
                    // The next in line may find a slot too.
                    self.freed.notify_waiters();
                    return Held { slot, scheduler: self.clone() };
                }
            }
            notified.await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn one_slot_per_gpu_by_default_and_never_two_runs_on_one_gpu() {
        assert_eq!(slots(0, &[]).unwrap(), [Slot { index: 0, gpu: None }]);
        assert_eq!(slots(2, &[]).unwrap().len(), 2, "CPU slots share the CPU, as configured");
        let s = slots(0, &[0, 3]).unwrap();
        assert_eq!(s.iter().map(|s| s.gpu).collect::<Vec<_>>(), [Some(0), Some(3)]);
        assert_eq!(s[1].gpus(), Gpus::Only(vec![3]));
        assert_eq!(slots(1, &[0, 3]).unwrap().len(), 1);
        let err = slots(3, &[0, 3]).unwrap_err().to_string();
        assert!(err.contains("2 GPU(s)") && err.contains("at most 2"), "{err}");
    }

    #[tokio::test]
    async fn runs_take_slots_in_queue_order_and_wait_for_a_free_one() {
        let s = Scheduler::new(slots(0, &[0, 1]).unwrap());
        for r in ["r1", "r2", "r3"] {
            s.enqueue(r);
        }
        assert_eq!(s.position("r3"), Some(3));
        // r2 cannot jump r1.
        assert!(tokio::time::timeout(Duration::from_millis(50), s.acquire("r2")).await.is_err());
        let a = s.acquire("r1").await;
        let b = s.acquire("r2").await;
        assert_eq!((a.slot.gpu, b.slot.gpu), (Some(0), Some(1)));
        assert_eq!(s.queued(), ["r3"]);
        let waiting = tokio::spawn({
            let s = s.clone();
            async move { s.acquire("r3").await.slot.gpu }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "both slots are taken");
        drop(a);
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap(), Some(0));
        drop(b);
    }

    #[tokio::test]
    async fn a_run_taken_out_of_the_queue_lets_the_next_one_go() {
        let s = Scheduler::new(slots(1, &[]).unwrap());
        s.enqueue("r1");
        s.enqueue("r2");
        let next = tokio::spawn({
            let s = s.clone();
            async move { s.acquire("r2").await.slot.index }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!next.is_finished());
        assert!(s.dequeue("r1"));
        assert!(!s.dequeue("r1"), "only once");
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), next).await.unwrap().unwrap(), 0);
    }
}
