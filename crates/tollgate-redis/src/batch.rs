//! Rate-limit decisions made while others are in flight travel together: one
//! `EVALSHA` decides a whole batch.
//!
//! On one Redis server a decision's script run is a few microseconds, and the call
//! around it (reading and parsing the command, setting up the script, writing the
//! reply, the client's own work per command) adds to each: sent in batches, one
//! Redis decides about a third more per second with 64 in flight (BENCHMARKS.md). A
//! decision arriving while [`MAX_BATCHES_IN_FLIGHT`] batches are already out waits for
//! the next batch instead of making a call of its own, so under load the per-call
//! cost is shared by up to [`MAX_BATCH`] decisions, and an idle store adds no wait:
//! a lone decision leaves at once, in a batch of one.
//!
//! The script decides a batch's keys one after the other in one atomic run, each
//! reading what the one before it wrote, so decisions on the same key within a batch
//! are exactly as if they had come one by one. Only a single server batches: on a
//! Redis Cluster every key of a script must hash to one slot, so each decision there
//! is a call of its own.
//!
//! A batch is one call under the backend's timeout and breaker: when Redis stops
//! answering, the first batches time out and open the breaker, and the batches
//! queued behind them are answered at once (by the failure policy), so a decision
//! waits at most about two timeouts, not one per batch ahead of it. An error from the
//! script (a key of another type, written by something else under tollgate's
//! prefix) fails every decision of its batch the same way.

use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;
use tollgate_core::StoreError;
use tollgate_ratelimit::gcra::MAX_LIMITS;

use crate::backend::RedisBackend;
use crate::ratelimit::GCRA;
use crate::script::ScriptCall;

/// Decisions per script call at most (the script's arguments stay under ~20 KiB).
const MAX_BATCH: usize = 32;
/// Batches sent and not yet answered at most: one being decided by Redis while the
/// next is on its way keeps Redis busy without queueing more than one batch there
/// (four and eight decided fewer per second with 64 in flight).
const MAX_BATCHES_IN_FLIGHT: usize = 2;

/// The script's arguments for one decision: now (seconds, nanoseconds), the number of
/// limits, then per limit its increment and capacity, each as seconds and nanoseconds.
pub(crate) const ARGS: usize = 3 + 4 * MAX_LIMITS;
/// The script's answer for one decision: now (seconds, nanoseconds), admitted (0 or
/// 1), then per limit the TAT it read, as seconds and nanoseconds.
pub(crate) const ANSWER: usize = 3 + 2 * MAX_LIMITS;

/// One decision for the script: its Redis key and arguments.
pub(crate) struct Job {
    pub(crate) key: String,
    pub(crate) args: [u64; ARGS],
    /// How many of `args` are used (`3 + 4 * limits`).
    pub(crate) used: usize,
}

impl Job {
    fn limits(&self) -> usize {
        (self.used - 3) / 4
    }
}

/// A decision's answer: the first `3 + 2 * limits` values are set.
pub(crate) type Answer = [u64; ANSWER];

/// Runs `jobs` in one script call (`mode`: `r` decides at Redis `TIME`, `c` at each
/// job's own time): the answers of every job in turn, `3 + 2 * limits` values each, as
/// the script packed them (8-byte little-endian integers), their number checked.
async fn run(backend: &RedisBackend, mode: &'static str, jobs: &[Job]) -> Result<Vec<u8>, StoreError> {
    let Some(first) = jobs.first() else {
        return Ok(Vec::new());
    };
    let args: usize = jobs.iter().map(|j| j.used).sum();
    let packed: Vec<u8> = backend
        .run(&first.key, |mut c| async move {
            let mut call =
                ScriptCall::with_keys(&GCRA, jobs.iter().map(|j| j.key.as_str()), 1 + args).arg(mode);
            for job in jobs {
                for a in &job.args[..job.used] {
                    call = call.arg(*a);
                }
            }
            call.invoke(&mut c).await
        })
        .await?;
    let values: usize = jobs.iter().map(|j| 3 + 2 * j.limits()).sum();
    if packed.len() != 8 * values {
        return Err(StoreError::Corrupt(
            "rate-limit script answered an unexpected shape".into(),
        ));
    }
    Ok(packed)
}

/// The answers of `jobs`, one after the other, from what [`run`] returned for them.
fn answers<'a>(jobs: &'a [Job], mut packed: &'a [u8]) -> impl Iterator<Item = Answer> + 'a {
    jobs.iter().map(move |job| {
        let (mine, rest) = packed.split_at(8 * (3 + 2 * job.limits()));
        packed = rest;
        let mut answer = [0; ANSWER];
        for (value, word) in answer.iter_mut().zip(mine.chunks_exact(8)) {
            *value = u64::from_le_bytes(word.try_into().expect("chunks of 8"));
        }
        answer
    })
}

/// Runs `job` alone in one script call.
pub(crate) async fn run_one(
    backend: &RedisBackend,
    mode: &'static str,
    job: &Job,
) -> Result<Answer, StoreError> {
    let jobs = std::slice::from_ref(job);
    let packed = run(backend, mode, jobs).await?;
    answers(jobs, &packed)
        .next()
        .ok_or_else(|| StoreError::Corrupt("rate-limit script answered nothing".into()))
}

/// The decisions waiting for a batch, and how many batches are out.
pub(crate) struct Coalescer {
    backend: RedisBackend,
    mode: &'static str,
    state: Mutex<State>,
}

/// Invariant: a queued decision has a spawned sender that will take it (a sender
/// leaves only when the queue is empty, and the last one dropped empties the queue).
#[derive(Default)]
struct State {
    queue: Vec<(Job, oneshot::Sender<Result<Answer, StoreError>>)>,
    /// Batches out: spawned senders, and at most one decision sent by its own task.
    senders: usize,
}

impl Coalescer {
    pub(crate) fn new(backend: RedisBackend, mode: &'static str) -> Arc<Self> {
        Arc::new(Coalescer {
            backend,
            mode,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Decides `job`: at once from this task when nothing is in flight, else in the
    /// next batch, starting a sender for it when fewer than [`MAX_BATCHES_IN_FLIGHT`]
    /// are out. Must be called inside a Tokio runtime.
    pub(crate) async fn decide(self: &Arc<Self>, job: Job) -> Result<Answer, StoreError> {
        let turn = {
            let mut state = self.lock();
            if state.senders == 0 {
                state.senders = 1;
                Turn::Now(job)
            } else {
                let (tx, rx) = oneshot::channel();
                state.queue.push((job, tx));
                let start = state.senders < MAX_BATCHES_IN_FLIGHT;
                state.senders += usize::from(start);
                Turn::Queued(rx, start)
            }
        };
        let (rx, start) = match turn {
            Turn::Queued(rx, start) => (rx, start),
            Turn::Now(job) => {
                // An idle store: a batch of one from this task, no task spawned, no channel.
                let _out = Out::new(&**self);
                return run_one(&self.backend, self.mode, &job).await;
            }
        };
        if start {
            tokio::spawn(Sender(Out::new(Arc::clone(self))).send_all());
        }
        rx.await
            .unwrap_or_else(|_| Err(StoreError::Unavailable("the batch was abandoned".into())))
    }
}

/// Whether a decision is sent at once or waits for a batch.
enum Turn {
    Now(Job),
    Queued(oneshot::Receiver<Result<Answer, StoreError>>, bool),
}

/// One of the `senders`, counted until it leaves or is dropped.
struct Out<C: Deref<Target = Coalescer>> {
    coalescer: C,
    left: bool,
}

impl<C: Deref<Target = Coalescer>> Out<C> {
    fn new(coalescer: C) -> Self {
        Out {
            coalescer,
            left: false,
        }
    }
}

impl<C: Deref<Target = Coalescer>> Drop for Out<C> {
    /// If this was the last sender out (a spawned one dropped unfinished, its runtime
    /// shutting down), the waiting decisions are answered (their channels close)
    /// rather than left waiting for a sender that will not come.
    fn drop(&mut self) {
        if self.left {
            return;
        }
        let mut state = self.coalescer.lock();
        state.senders -= 1;
        if state.senders == 0 {
            state.queue.clear();
        }
    }
}

/// A spawned task sending batches until the queue is empty.
struct Sender(Out<Arc<Coalescer>>);

impl Sender {
    async fn send_all(mut self) {
        let coalescer = Arc::clone(&self.0.coalescer);
        let mut jobs = Vec::with_capacity(MAX_BATCH);
        let mut replies = Vec::with_capacity(MAX_BATCH);
        loop {
            {
                let mut state = coalescer.lock();
                if state.queue.is_empty() {
                    // Leaves under the lock, so no decision is queued without a sender.
                    state.senders -= 1;
                    self.0.left = true;
                    return;
                }
                let n = state.queue.len().min(MAX_BATCH);
                for (job, reply) in state.queue.drain(..n) {
                    jobs.push(job);
                    replies.push(reply);
                }
            }
            match run(&coalescer.backend, coalescer.mode, &jobs).await {
                Ok(packed) => {
                    for (reply, answer) in replies.drain(..).zip(answers(&jobs, &packed)) {
                        let _ = reply.send(Ok(answer));
                    }
                }
                Err(e) => {
                    for reply in replies.drain(..) {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
            jobs.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(limits: usize) -> Job {
        Job {
            key: String::new(),
            args: [0; ARGS],
            used: 3 + 4 * limits,
        }
    }

    #[test]
    fn answers_split_the_packed_reply_by_each_jobs_limits() {
        let jobs = [job(1), job(2)];
        let values: [u64; 12] = [
            1_733_352_000,
            999_999_999,
            1,
            7,
            8,
            1_733_352_000,
            5,
            0,
            9,
            10,
            11,
            12,
        ];
        let packed: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let all: Vec<Answer> = answers(&jobs, &packed).collect();
        assert_eq!(all[0][..5], values[..5]);
        assert!(all[0][5..].iter().all(|&v| v == 0));
        assert_eq!(all[1][..7], values[5..]);
    }
}
