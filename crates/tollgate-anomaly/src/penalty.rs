//! Penalties (a caller throttled or blocked for a while) and where they are kept:
//! [`PenaltyBoard`].
//!
//! The layer reads the board on every request while it holds anything, so a board
//! answers from memory; a shared board (tollgate-redis's `RedisPenaltyBoard`) keeps
//! a local copy that its replicas update for each other, so a caller blocked on one
//! replica is blocked on all.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tollgate_core::clock::Timestamp;

use crate::bounded::BoundedMap;
use crate::config::Action;
use crate::tags::{AnomalyKind, AnomalyTags};

/// Who a penalty lands on: a keyed 64-bit hash of a credential digest or of a
/// coarsened network, under a key derived from the pseudonym secret (so replicas
/// sharing the secret agree on it, and nothing outside them can link it to anyone).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PenaltyKey(u64);

impl PenaltyKey {
    /// The key from its 64-bit value (as read back from a shared board).
    pub const fn from_u64(value: u64) -> Self {
        PenaltyKey(value)
    }

    /// The key's 64-bit value.
    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for PenaltyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PenaltyKey({:016x})", self.0)
    }
}

/// A penalty in force on one caller until a time.
///
/// ```
/// use tollgate_anomaly::{Action, AnomalyKind, AnomalyTags, Penalty};
/// use tollgate_core::Timestamp;
///
/// let mut tags = AnomalyTags::default();
/// tags.insert(AnomalyKind::Volume, 70);
/// let now = Timestamp::from_nanos(1_000);
/// let mut p = Penalty { action: Action::Throttle, until: Timestamp::from_nanos(5_000), tags };
/// // A block outranks the throttle; a later throttle would not shorten or weaken it.
/// p.merge(Penalty { action: Action::Block, until: Timestamp::from_nanos(3_000), tags }, now);
/// assert_eq!((p.action, p.until.as_nanos()), (Action::Block, 5_000));
/// p.merge(Penalty { action: Action::Throttle, until: Timestamp::from_nanos(9_000), tags }, now);
/// assert_eq!((p.action, p.until.as_nanos()), (Action::Block, 5_000));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Penalty {
    /// [`Action::Throttle`] or [`Action::Block`].
    pub action: Action,
    /// When it lifts.
    pub until: Timestamp,
    /// The tags that earned it (each refused request records them).
    pub tags: AnomalyTags,
}

impl Penalty {
    /// True if the penalty holds at `now`.
    pub fn is_active(&self, now: Timestamp) -> bool {
        now < self.until && self.action > Action::Record
    }

    /// Folds a new penalty into this one: an expired penalty is replaced; otherwise
    /// an action at least as strong takes over and extends the end, a weaker one
    /// changes neither, and the tags add up. Every board merges by this rule (the
    /// Redis board's script mirrors it on the action and end).
    pub fn merge(&mut self, new: Penalty, now: Timestamp) {
        if !self.is_active(now) {
            *self = new;
            return;
        }
        if new.action >= self.action {
            self.action = new.action;
            self.until = self.until.max(new.until);
        }
        self.tags.merge(new.tags);
    }

    /// True if merging `new` would change nothing a replica needs to hear about: the
    /// same or a stronger action already holds, with every tag, until no earlier than
    /// `slack` before `new` ends.
    pub fn covers(&self, new: &Penalty, now: Timestamp, slack: Duration) -> bool {
        self.is_active(now)
            && self.action >= new.action
            && self.until.saturating_add(slack) >= new.until
            && new.tags.iter().all(|(k, s)| self.tags.score(k) >= Some(s))
    }
}

/// Where penalties are kept. The anomaly layer asks [`get`](PenaltyBoard::get) on
/// every request while [`is_empty`](PenaltyBoard::is_empty) is false, so both must
/// answer from memory without waiting.
pub trait PenaltyBoard: Send + Sync + 'static {
    /// The penalty in force on `key` at `now`, if any.
    fn get(&self, key: PenaltyKey, now: Timestamp) -> Option<Penalty>;

    /// Puts `penalty` on `key`, merged with the one in force ([`Penalty::merge`]). It
    /// holds locally at once; a shared board passes it on to the other replicas in
    /// the background.
    fn impose(&self, key: PenaltyKey, penalty: Penalty, now: Timestamp);

    /// True if the board holds no penalty (one atomic read on the request path).
    fn is_empty(&self) -> bool;

    /// How many penalties are held (expired ones included until dropped) and the most it holds.
    fn size(&self) -> (usize, usize);

    /// The longest a penalty stays held after it ends.
    fn retention(&self) -> Duration;

    /// Drops expired penalties now.
    fn purge_expired(&self, now: Timestamp) {
        let _ = now;
    }
}

/// The board a layer holds; one board can serve several layers.
pub type SharedPenaltyBoard = Arc<dyn PenaltyBoard>;

/// The in-process board (the default): a bounded map whose entries go when their
/// penalty ends.
pub struct MemoryPenaltyBoard {
    map: BoundedMap<Penalty>,
}

impl fmt::Debug for MemoryPenaltyBoard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryPenaltyBoard")
            .field("len", &self.map.len())
            .field("capacity", &self.map.capacity())
            .finish()
    }
}

impl MemoryPenaltyBoard {
    /// A board of at most `max_entries` penalties, none longer than `longest`.
    pub fn new(max_entries: usize, longest: Duration) -> Self {
        MemoryPenaltyBoard {
            map: BoundedMap::new(max_entries, longest),
        }
    }
}

impl PenaltyBoard for MemoryPenaltyBoard {
    fn get(&self, key: PenaltyKey, now: Timestamp) -> Option<Penalty> {
        self.map
            .get(key.0, now.as_nanos(), |p| *p)
            .filter(|p| p.is_active(now))
    }

    fn impose(&self, key: PenaltyKey, penalty: Penalty, now: Timestamp) {
        self.map
            .update(key.0, now.as_nanos(), Penalty::default, |p| p.merge(penalty, now));
    }

    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn size(&self) -> (usize, usize) {
        (self.map.len(), self.map.capacity())
    }

    fn retention(&self) -> Duration {
        self.map.retention()
    }

    fn purge_expired(&self, now: Timestamp) {
        self.map.purge_expired(now.as_nanos());
    }
}

/// An [`AnomalyTags`] text that does not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagsParseError;

impl fmt::Display for TagsParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expected comma-separated kind:score pairs")
    }
}

impl std::error::Error for TagsParseError {}

impl FromStr for AnomalyTags {
    type Err = TagsParseError;

    /// Parses the [`Display`](fmt::Display) form, `kind:score` pairs separated by commas.
    ///
    /// ```
    /// use tollgate_anomaly::{AnomalyKind, AnomalyTags};
    ///
    /// let tags: AnomalyTags = "volume:55,enumeration:80".parse().unwrap();
    /// assert_eq!(tags.score(AnomalyKind::Enumeration), Some(80));
    /// assert_eq!(tags.to_string().parse::<AnomalyTags>(), Ok(tags));
    /// assert!("".parse::<AnomalyTags>().unwrap().is_empty());
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut tags = AnomalyTags::default();
        for pair in s.split(',').filter(|p| !p.is_empty()) {
            let (name, score) = pair.split_once(':').ok_or(TagsParseError)?;
            let kind = AnomalyKind::ALL
                .into_iter()
                .find(|k| k.as_str() == name)
                .ok_or(TagsParseError)?;
            tags.insert(kind, score.parse().map_err(|_| TagsParseError)?);
        }
        Ok(tags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn at(secs: u64) -> Timestamp {
        Timestamp::from_nanos(secs * SEC)
    }

    fn penalty(action: Action, until: u64) -> Penalty {
        Penalty {
            action,
            until: at(until),
            tags: AnomalyTags::default(),
        }
    }

    #[test]
    fn memory_board_merges_and_expires() {
        let board = MemoryPenaltyBoard::new(100, Duration::from_secs(60));
        let key = PenaltyKey::from_u64(7);
        assert!(board.is_empty());
        board.impose(key, penalty(Action::Throttle, 30), at(0));
        board.impose(key, penalty(Action::Block, 10), at(1));
        assert_eq!(board.get(key, at(2)), Some(penalty(Action::Block, 30)));
        // A weaker action does not extend a stronger one.
        board.impose(key, penalty(Action::Throttle, 50), at(3));
        assert_eq!(board.get(key, at(3)).map(|p| p.until), Some(at(30)));
        assert_eq!(board.get(key, at(30)), None);
        // After it ends, a new penalty starts afresh.
        board.impose(key, penalty(Action::Throttle, 40), at(31));
        assert_eq!(board.get(key, at(32)), Some(penalty(Action::Throttle, 40)));
        assert_eq!(board.get(PenaltyKey::from_u64(8), at(32)), None);
    }

    #[test]
    fn covers_only_what_adds_nothing() {
        let mut tagged = penalty(Action::Block, 100);
        tagged.tags.insert(AnomalyKind::Volume, 50);
        let slack = Duration::from_secs(10);
        assert!(tagged.covers(&penalty(Action::Throttle, 105), at(0), slack));
        assert!(!tagged.covers(&penalty(Action::Throttle, 120), at(0), slack));
        let mut other = penalty(Action::Block, 100);
        other.tags.insert(AnomalyKind::Enumeration, 10);
        assert!(!tagged.covers(&other, at(0), slack));
        assert!(!penalty(Action::Throttle, 100).covers(&penalty(Action::Block, 100), at(0), slack));
        assert!(!tagged.covers(&penalty(Action::Throttle, 50), at(100), slack));
    }

    #[test]
    fn tags_reject_junk() {
        for junk in ["volume", "volume:x", "nope:5", "volume:5,,:"] {
            assert_eq!(junk.parse::<AnomalyTags>(), Err(TagsParseError), "{junk}");
        }
    }
}
