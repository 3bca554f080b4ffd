//! `RedisRateLimitStore`: GCRA as one atomic Lua script per batch of decisions.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};

use redis::Script;
use tollgate_core::{BoxFuture, FailurePolicy, StoreError, Timestamp};
use tollgate_ratelimit::gcra::{self, Decision, Limit, MAX_LIMITS};
use tollgate_ratelimit::{MemoryRateLimitStore, RateLimitKey, RateLimitStore};

use crate::backend::RedisBackend;
use crate::batch::{self, Coalescer, Job};
use crate::config::{RateLimitClock, RateLimitFallback};

/// The GCRA script. Times are integer nanoseconds, carried as two limbs (whole
/// seconds and nanoseconds) because Lua numbers are doubles (exact only to 2^53).
///
/// KEYS: one key per decision (a batch, see [`crate::batch`]). ARGV: mode (`r`: Redis
/// `TIME`, read once for the batch; `c`: each decision's own time), then per key: now
/// seconds, now nanoseconds, number of limits, then per limit the increment (`cost *
/// interval`, or `capacity + 1` for a cost above the burst) and the capacity, each as
/// seconds and nanoseconds.
///
/// For each key in turn: reads the stored TATs (`"s1 n1 s2 n2 …"`: seconds and
/// nanoseconds per limit, missing = 0); admits iff every limit admits
/// (`max(tat, now) + inc <= now + capacity`); if admitted, stores the new TATs with a
/// TTL until every budget is full again (rounded up to the millisecond), or deletes
/// the key when that is now. Answers per key `now s, now ns, admitted, old TAT s, old
/// TAT ns, …`, one key after the other, as one string of 8-byte little-endian integers
/// (`struct.pack`; all are below 2^53): an array reply of integers cost the client
/// more to parse than all the rest of a decision, and decimal text cost Redis more to
/// format. The caller computes the full [`Decision`] from these with
/// [`gcra::decide_all`], the specification.
pub(crate) static GCRA: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local B = 1000000000
local rh, rl
if ARGV[1] == 'r' then
  local t = redis.call('TIME')
  rh, rl = tonumber(t[1]), tonumber(t[2]) * 1000
end
local out = {}
local o = 0
local a = 2
for k = 1, #KEYS do
  local nh, nl = rh, rl
  if not nh then nh, nl = tonumber(ARGV[a]), tonumber(ARGV[a + 1]) end
  local n = tonumber(ARGV[a + 2])
  local old = {}
  local stored = redis.call('GET', KEYS[k])
  if stored then
    for s in string.gmatch(stored, '%d+') do old[#old + 1] = tonumber(s) end
  end
  out[o + 1], out[o + 2], out[o + 3] = nh, nl, 1
  local admitted = 1
  local new = {}
  local fh, fl = nh, nl
  for i = 1, n do
    local j = a + 3 + (i - 1) * 4
    local oh, ol = old[2 * i - 1] or 0, old[2 * i] or 0
    out[o + 2 + 2 * i], out[o + 3 + 2 * i] = oh, ol
    local ch, cl = nh + tonumber(ARGV[j + 2]), nl + tonumber(ARGV[j + 3])
    if cl >= B then ch, cl = ch + 1, cl - B end
    -- a TAT beyond now + capacity means the clock went back: a full budget again
    if oh > ch or (oh == ch and ol > cl) then oh, ol = 0, 0 end
    -- base = max(tat, now); t = base + inc; admitted iff t <= now + capacity
    if oh < nh or (oh == nh and ol <= nl) then oh, ol = nh, nl end
    local th, tl = oh + tonumber(ARGV[j]), ol + tonumber(ARGV[j + 1])
    if tl >= B then th, tl = th + 1, tl - B end
    if th > ch or (th == ch and tl > cl) then admitted = 0 end
    new[2 * i - 1], new[2 * i] = th, tl
    if th > fh or (th == fh and tl > fl) then fh, fl = th, tl end
  end
  out[o + 3] = admitted
  if admitted == 1 then
    if fh == nh and fl == nl then
      redis.call('DEL', KEYS[k])
    else
      local hi, lo = fh - nh, fl - nl
      if lo < 0 then lo = lo + B; hi = hi - 1 end
      redis.call('SET', KEYS[k], table.concat(new, ' '), 'PX', hi * 1000 + math.ceil(lo / 1000000))
    end
  end
  o = o + 3 + 2 * n
  a = a + 3 + 4 * n
end
return struct.pack('<' .. string.rep('i8', #out), unpack(out))
"#,
    )
});

const NANOS: u64 = 1_000_000_000;

/// The batches of a store on `backend`: on one server only (see [`crate::batch`]).
fn batches(backend: &RedisBackend, clock: RateLimitClock) -> Option<Arc<Coalescer>> {
    (!backend.is_cluster()).then(|| Coalescer::new(backend.clone(), clock.mode()))
}

/// A [`RateLimitStore`] on Redis: every replica spends from one budget per key.
///
/// Decisions are made by an `EVALSHA` of a Lua script (loaded once, reloaded when
/// Redis answers `NOSCRIPT`, e.g. after a restart) that reads each key's TATs, decides
/// every stacked limit at once and stores the advanced TATs only if all admit, so two
/// replicas can never both spend the last unit. On one server, decisions made while
/// others are in flight share one call (up to 32 a call; a lone decision leaves at
/// once), which raises what one Redis decides per second under load (BENCHMARKS.md).
/// The script reads Redis `TIME` (see [`RateLimitClock`]). The key (`tollgate:[ns:]rl:[scope:]{digest}`) expires when
/// every budget would be full again. The [`Decision`] returned is computed by
/// [`gcra::decide_all`] from the TATs and time the script used: the same function as
/// the in-process store, so both decide alike (checked by a property test).
///
/// When Redis cannot decide (unreachable, slow, breaker open), `[store.rate_limit]
/// on_failure` decides instead:
/// - `open` (default): the request is admitted (a decision of cost 0: nothing spent,
///   headers show a full budget);
/// - `closed`: the request is refused as if the budget were spent (retry after one
///   interval);
/// - `local`: an in-process [`MemoryRateLimitStore`] decides, with the same limits;
///   each replica then has its own budget until Redis returns.
///
/// Every such decision is counted (`fail_open`, `fail_closed`, `fallback_local` in
/// [`RedisBackend::stats`]) and the first of a run is logged.
#[derive(Clone)]
pub struct RedisRateLimitStore {
    backend: RedisBackend,
    fallback: RateLimitFallback,
    local: Option<MemoryRateLimitStore>,
    clock: RateLimitClock,
    /// Decisions waiting to be sent together; `None` on a cluster, where each is a
    /// call of its own.
    batches: Option<Arc<Coalescer>>,
    engaged: Arc<AtomicBool>,
    corrupt_logged: Arc<AtomicBool>,
}

impl fmt::Debug for RedisRateLimitStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimitStore")
            .field("backend", &self.backend)
            .field("fallback", &self.fallback)
            .field("clock", &self.clock)
            .finish()
    }
}

impl RedisRateLimitStore {
    /// A store on `backend` with the settings of `[store.rate_limit]`.
    pub fn new(backend: &RedisBackend) -> Self {
        let config = &backend.config().rate_limit;
        RedisRateLimitStore {
            backend: backend.clone(),
            fallback: config.on_failure,
            local: (config.on_failure == RateLimitFallback::Local)
                .then(|| MemoryRateLimitStore::new(config.local_max_entries)),
            clock: config.clock,
            batches: batches(backend, config.clock),
            engaged: Arc::new(AtomicBool::new(false)),
            corrupt_logged: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Sets what a decision does when Redis cannot make it.
    pub fn with_fallback(mut self, fallback: RateLimitFallback) -> Self {
        self.fallback = fallback;
        if fallback == RateLimitFallback::Local && self.local.is_none() {
            self.local = Some(MemoryRateLimitStore::new(
                self.backend.config().rate_limit.local_max_entries,
            ));
        }
        self
    }

    /// Sets whose clock decisions are made at.
    pub fn with_clock(mut self, clock: RateLimitClock) -> Self {
        self.clock = clock;
        self.batches = batches(&self.backend, clock);
        self
    }

    /// The backend.
    pub fn backend(&self) -> &RedisBackend {
        &self.backend
    }

    /// The in-process fallback store, when `on_failure = "local"`.
    pub fn local_fallback(&self) -> Option<&MemoryRateLimitStore> {
        self.local.as_ref()
    }

    async fn decide_in_redis(
        &self,
        key: &RateLimitKey,
        limits: &[Limit],
        cost: u64,
        now: Timestamp,
    ) -> Result<Decision, StoreError> {
        let now = now.as_nanos();
        let mut args = [0u64; batch::ARGS];
        args[0] = now / NANOS;
        args[1] = now % NANOS;
        args[2] = limits.len() as u64;
        for (i, l) in limits.iter().enumerate() {
            let inc = if cost <= l.burst() {
                cost * l.interval()
            } else {
                l.capacity() + 1
            };
            let at = 3 + 4 * i;
            args[at] = inc / NANOS;
            args[at + 1] = inc % NANOS;
            args[at + 2] = l.capacity() / NANOS;
            args[at + 3] = l.capacity() % NANOS;
        }
        let job = Job {
            key: self.backend.key_of(&key.store_key()),
            args,
            used: 3 + 4 * limits.len(),
        };
        let out = match &self.batches {
            Some(batches) => batches.decide(job).await?,
            None => batch::run_one(&self.backend, self.clock.mode(), &job).await?,
        };
        let join = |s: u64, ns: u64| s.saturating_mul(NANOS).saturating_add(ns);
        let mut tats = [0u64; MAX_LIMITS];
        for (i, t) in tats.iter_mut().take(limits.len()).enumerate() {
            *t = join(out[3 + 2 * i], out[4 + 2 * i]);
        }
        let decision = gcra::decide_all(&tats[..limits.len()], join(out[0], out[1]), limits, cost);
        if decision.allowed() != (out[2] == 1) {
            tracing::error!(
                store = "redis",
                r#use = "rate_limit",
                "the rate-limit script and gcra::decide_all disagree; report this as a bug"
            );
            return Err(StoreError::Corrupt(
                "rate-limit script disagrees with gcra".into(),
            ));
        }
        Ok(decision)
    }

    fn fall_back(&self, key: &RateLimitKey, limits: &[Limit], cost: u64, now: Timestamp) -> Decision {
        let n = now.as_nanos();
        match self.fallback {
            RateLimitFallback::Open => {
                self.backend
                    .record_policy(&self.engaged, "rate_limit", FailurePolicy::Open);
                gcra::decide_all(&[0; MAX_LIMITS][..limits.len()], n, limits, 0)
            }
            RateLimitFallback::Closed => {
                self.backend
                    .record_policy(&self.engaged, "rate_limit", FailurePolicy::Closed);
                let mut empty = [0u64; MAX_LIMITS];
                for (t, l) in empty.iter_mut().zip(limits) {
                    *t = n.saturating_add(l.capacity());
                }
                gcra::decide_all(&empty[..limits.len()], n, limits, cost.max(1))
            }
            RateLimitFallback::Local => {
                self.backend
                    .counters()
                    .fallback_local
                    .fetch_add(1, Ordering::Relaxed);
                if !self.engaged.load(Ordering::Relaxed) && !self.engaged.swap(true, Ordering::AcqRel) {
                    tracing::warn!(
                        store = "redis",
                        r#use = "rate_limit",
                        policy = "local",
                        "redis unavailable: rate limits decided by the in-process fallback"
                    );
                }
                match &self.local {
                    Some(local) => local.decide(key, limits, cost, now),
                    None => gcra::decide_all(&[0; MAX_LIMITS][..limits.len()], n, limits, 0),
                }
            }
        }
    }
}

impl RedisRateLimitStore {
    async fn check_and_spend_async(
        &self,
        key: &RateLimitKey,
        limits: &[Limit],
        cost: u64,
        now: Timestamp,
    ) -> Result<Decision, StoreError> {
        if limits.len() > MAX_LIMITS {
            return Err(StoreError::Corrupt(format!(
                "at most {MAX_LIMITS} stacked limits"
            )));
        }
        match self.decide_in_redis(key, limits, cost, now).await {
            Ok(decision) => {
                self.backend.record_recovered(&self.engaged, "rate_limit");
                Ok(decision)
            }
            // Unreachable, slow, or an answer that does not fit: the policy decides.
            Err(e) => {
                if matches!(e, StoreError::Corrupt(_))
                    && !self.corrupt_logged.load(Ordering::Relaxed)
                    && !self.corrupt_logged.swap(true, Ordering::AcqRel)
                {
                    tracing::error!(
                        store = "redis",
                        r#use = "rate_limit",
                        error = %e,
                        "rate-limit script answer unusable; decisions follow the failure policy"
                    );
                }
                Ok(self.fall_back(key, limits, cost, now))
            }
        }
    }
}

impl RateLimitStore for RedisRateLimitStore {
    fn check_and_spend<'a>(
        &'a self,
        key: &'a RateLimitKey,
        limits: &'a [Limit],
        cost: u64,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        Box::pin(self.check_and_spend_async(key, limits, cost, now))
    }
}
