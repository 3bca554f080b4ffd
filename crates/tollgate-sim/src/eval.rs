//! Scoring: per-detector precision, recall and false-positive rate, per-attack recall.

use std::fmt::Write as _;
use std::time::Duration;

use tollgate_anomaly::{AnomalyKind, KIND_COUNT, StateSize};

use crate::scenario::Label;

/// What one actor drew from the detectors.
#[derive(Clone, Copy, Debug, Default)]
pub struct Outcome {
    /// Tag kinds seen on any of its requests (bit per [`AnomalyKind::index`]).
    pub kinds: u8,
    /// Requests sent.
    pub requests: u32,
    /// Requests sent up to and including the first tagged one.
    pub first_tag: Option<u32>,
}

impl Outcome {
    /// True if any request was tagged with `kind`.
    pub fn has(&self, kind: AnomalyKind) -> bool {
        self.kinds & (1 << kind.index()) != 0
    }

    /// True if any request was tagged.
    pub fn flagged(&self) -> bool {
        self.kinds != 0
    }
}

/// The attack labels each detector is meant to catch (its recall is over these).
pub fn targets(kind: AnomalyKind) -> &'static [Label] {
    match kind {
        AnomalyKind::Volume => &[Label::ScrapeBurst],
        AnomalyKind::CredentialStuffing => &[Label::Stuffing],
        AnomalyKind::Enumeration => &[Label::Enumeration, Label::ScrapeBurst, Label::SlowScrape],
        AnomalyKind::TokenSharing => &[Label::TokenTheft, Label::IdleReplay],
        AnomalyKind::UnusualSequence => &[Label::TokenTheft, Label::IdleReplay],
    }
}

/// One detector's row.
#[derive(Clone, Debug)]
pub struct DetectorRow {
    /// The detector.
    pub kind: AnomalyKind,
    /// Attack actors it tagged (any attack counts as a true positive).
    pub true_positives: u32,
    /// Normal sessions and batch runs it tagged.
    pub false_positives: u32,
    /// `tp / (tp + fp)`; `None` when it tagged nothing.
    pub precision: Option<f64>,
    /// Share of its target attacks it tagged.
    pub recall: f64,
    /// Share of normal sessions and batch runs it tagged.
    pub fpr: f64,
}

/// One attack type's row.
#[derive(Clone, Debug)]
pub struct AttackRow {
    /// The attack.
    pub label: Label,
    /// Actors of this type.
    pub actors: u32,
    /// Actors tagged by any detector.
    pub detected: u32,
    /// `detected / actors`.
    pub recall: f64,
    /// The median number of requests until the first tag, over detected actors.
    pub median_requests_to_tag: Option<u32>,
    /// Requests sent by actors of this type.
    pub requests: u64,
}

/// The result of one run.
#[derive(Clone, Debug)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Requests driven through the stack.
    pub requests: u64,
    /// Normal sessions and batch-job runs (the false-positive denominator).
    pub normal: u32,
    /// Normal sessions whose token an attacker replayed (excluded from the FPR).
    pub compromised: u32,
    /// Normal sessions and batch runs tagged by any detector.
    pub false_positives: u32,
    /// `false_positives / normal`.
    pub fpr: f64,
    /// Per detector.
    pub detectors: Vec<DetectorRow>,
    /// Per attack type.
    pub attacks: Vec<AttackRow>,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
    /// The anomaly layer's state at the end.
    pub state: Vec<StateSize>,
    /// Responses by status class: 2xx, 401, 403, 404, 429, other.
    pub statuses: [u64; 6],
}

fn ratio(n: u32, d: u32) -> f64 {
    if d == 0 { 0.0 } else { f64::from(n) / f64::from(d) }
}

/// Scores outcomes. `compromised[i]` excludes actor `i` from the normal population.
pub fn score(
    labels: &[Label],
    compromised: &[bool],
    outcomes: &[Outcome],
) -> (u32, u32, u32, Vec<DetectorRow>, Vec<AttackRow>) {
    let is_normal = |i: usize| !labels[i].is_attack() && !compromised[i];
    let normal = (0..labels.len()).filter(|i| is_normal(*i)).count() as u32;
    let compromised_n = (0..labels.len())
        .filter(|i| !labels[*i].is_attack() && compromised[*i])
        .count() as u32;
    let false_positives = (0..labels.len())
        .filter(|i| is_normal(*i) && outcomes[*i].flagged())
        .count() as u32;
    let mut detectors = Vec::with_capacity(KIND_COUNT);
    for kind in AnomalyKind::ALL {
        let tp = (0..labels.len())
            .filter(|i| labels[*i].is_attack() && outcomes[*i].has(kind))
            .count() as u32;
        let fp = (0..labels.len())
            .filter(|i| is_normal(*i) && outcomes[*i].has(kind))
            .count() as u32;
        let targets = targets(kind);
        let target_n = labels.iter().filter(|l| targets.contains(l)).count() as u32;
        let target_hit = (0..labels.len())
            .filter(|i| targets.contains(&labels[*i]) && outcomes[*i].has(kind))
            .count() as u32;
        detectors.push(DetectorRow {
            kind,
            true_positives: tp,
            false_positives: fp,
            precision: (tp + fp > 0).then(|| ratio(tp, tp + fp)),
            recall: ratio(target_hit, target_n),
            fpr: ratio(fp, normal),
        });
    }
    let mut attacks = Vec::new();
    for label in Label::ATTACKS {
        if !labels.contains(&label) {
            continue;
        }
        let of: Vec<&Outcome> = (0..labels.len())
            .filter(|i| labels[*i] == label)
            .map(|i| &outcomes[i])
            .collect();
        let detected = of.iter().filter(|o| o.flagged()).count() as u32;
        let mut firsts: Vec<u32> = of.iter().filter_map(|o| o.first_tag).collect();
        firsts.sort_unstable();
        attacks.push(AttackRow {
            label,
            actors: of.len() as u32,
            detected,
            recall: ratio(detected, of.len() as u32),
            median_requests_to_tag: firsts.get(firsts.len() / 2).copied(),
            requests: of.iter().map(|o| u64::from(o.requests)).sum(),
        });
    }
    (normal, compromised_n, false_positives, detectors, attacks)
}

impl Report {
    /// Checks the detection bounds: recall of at least `min_recall` per attack type of
    /// the default mix and a false-positive rate of at most `max_fpr`. (Idle-owner
    /// replays, outside the default mix, are reported but not bounded.)
    pub fn check(&self, min_recall: f64, max_fpr: f64) -> Result<(), String> {
        let mut problems = Vec::new();
        for a in &self.attacks {
            if a.actors > 0 && a.label != Label::IdleReplay && a.recall < min_recall {
                problems.push(format!("{}: recall {:.3} < {min_recall}", a.label, a.recall));
            }
        }
        if self.fpr > max_fpr {
            problems.push(format!("false-positive rate {:.4} > {max_fpr}", self.fpr));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// The tables, as Markdown.
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "seed {}: {} requests in {:.1} s ({:.0} requests/s through the full stack); {} normal sessions and batch runs, {} sessions with a stolen token excluded",
            self.seed,
            self.requests,
            self.elapsed.as_secs_f64(),
            self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9),
            self.normal,
            self.compromised,
        );
        let _ = writeln!(
            out,
            "responses: 2xx {}, 401 {}, 403 {}, 404 {}, 429 {}, other {}\n",
            self.statuses[0],
            self.statuses[1],
            self.statuses[2],
            self.statuses[3],
            self.statuses[4],
            self.statuses[5]
        );
        out.push_str(
            "| detector | targets | tagged attacks | tagged normal | precision | recall (targets) | FPR |\n",
        );
        out.push_str("|---|---|---:|---:|---:|---:|---:|\n");
        for d in &self.detectors {
            let targets: Vec<&str> = targets(d.kind)
                .iter()
                .filter(|l| self.attacks.iter().any(|a| a.label == **l))
                .map(|l| l.as_str())
                .collect();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {:.3} | {:.4} |",
                d.kind,
                targets.join(", "),
                d.true_positives,
                d.false_positives,
                d.precision.map_or("-".to_string(), |p| format!("{p:.3}")),
                d.recall,
                d.fpr
            );
        }
        let _ = writeln!(
            out,
            "| **any** | all attacks | {} | {} | {} | {:.3} | **{:.4}** |\n",
            self.attacks.iter().map(|a| a.detected).sum::<u32>(),
            self.false_positives,
            {
                let tp: u32 = self.attacks.iter().map(|a| a.detected).sum();
                let d = tp + self.false_positives;
                if d == 0 {
                    "-".to_string()
                } else {
                    format!("{:.3}", ratio(tp, d))
                }
            },
            ratio(
                self.attacks.iter().map(|a| a.detected).sum(),
                self.attacks.iter().map(|a| a.actors).sum()
            ),
            self.fpr
        );
        out.push_str("| attack | actors | requests | detected | recall | median requests to first tag |\n");
        out.push_str("|---|---:|---:|---:|---:|---:|\n");
        for a in &self.attacks {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | **{:.3}** | {} |",
                a.label,
                a.actors,
                a.requests,
                a.detected,
                a.recall,
                a.median_requests_to_tag
                    .map_or("-".to_string(), |m| m.to_string())
            );
        }
        out.push_str("\n| state | entries | cap |\n|---|---:|---:|\n");
        for s in &self.state {
            let _ = writeln!(out, "| {} | {} | {} |", s.name, s.len, s.capacity);
        }
        out
    }
}
