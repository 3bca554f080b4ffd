//! What to simulate: the population, the attacks, and the ground-truth labels.

use std::fmt;

/// Who an actor is, as the simulator knows it (the stack never sees this).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Label {
    /// One browsing session of an ordinary user.
    Normal,
    /// One run of an honest integration (a batch job paging through a list API).
    Batch,
    /// A credential-stuffing campaign (login form or API keys) from one network.
    Stuffing,
    /// An authenticated user walking other users' order ids (BOLA).
    Enumeration,
    /// A stolen API key replayed from another network while its owner is active.
    TokenTheft,
    /// A stolen API key replayed after its owner went idle (not in the default mix:
    /// to the fingerprinting layer this looks like a device or network change).
    IdleReplay,
    /// A fast scraper: many item pages per second for a few minutes.
    ScrapeBurst,
    /// A slow-and-low scraper: one item page every 15 to 60 seconds for hours.
    SlowScrape,
}

impl Label {
    /// Every attack label, in table order.
    pub const ATTACKS: [Label; 6] = [
        Label::Stuffing,
        Label::Enumeration,
        Label::TokenTheft,
        Label::ScrapeBurst,
        Label::SlowScrape,
        Label::IdleReplay,
    ];

    /// True for attacks.
    pub fn is_attack(self) -> bool {
        !matches!(self, Label::Normal | Label::Batch)
    }

    /// The label's name in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Label::Normal => "normal session",
            Label::Batch => "batch job run",
            Label::Stuffing => "credential stuffing",
            Label::Enumeration => "enumeration (BOLA)",
            Label::TokenTheft => "token theft",
            Label::IdleReplay => "token replay after the owner left",
            Label::ScrapeBurst => "scraping burst",
            Label::SlowScrape => "slow-and-low scraping",
        }
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The population and attack mix of one run.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// Ordinary users; each has one to three sessions a day.
    pub users: u32,
    /// Simulated hours (from midnight).
    pub hours: u32,
    /// Honest batch-job runs (pro-tier integrations paging `/v1/orders`).
    pub batch_jobs: u32,
    /// Credential-stuffing campaigns.
    pub stuffing: u32,
    /// BOLA enumerations.
    pub enumeration: u32,
    /// Stolen-token replays.
    pub token_theft: u32,
    /// Fast scraping bursts.
    pub scrape_burst: u32,
    /// Slow-and-low scrapers.
    pub slow_scrape: u32,
    /// Stolen-token replays after the owner went idle (0 in the default mixes).
    pub idle_replay: u32,
    /// Items in the catalogue.
    pub catalogue: u32,
}

impl Scenario {
    /// The default mix: 3,000 users over 24 hours, 40 batch-job runs, 20 attacks of each kind.
    pub fn default_mix() -> Self {
        Scenario {
            users: 3_000,
            hours: 24,
            batch_jobs: 40,
            stuffing: 20,
            enumeration: 20,
            token_theft: 20,
            scrape_burst: 20,
            slow_scrape: 20,
            idle_replay: 0,
            catalogue: 50_000,
        }
    }

    /// A smaller mix for debug-build tests: 600 users over 8 hours, 10 attacks of each kind.
    pub fn test_mix() -> Self {
        Scenario {
            users: 600,
            hours: 8,
            batch_jobs: 10,
            stuffing: 10,
            enumeration: 10,
            token_theft: 10,
            scrape_burst: 10,
            slow_scrape: 10,
            idle_replay: 0,
            catalogue: 20_000,
        }
    }

    /// The number of actors of an attack label.
    pub fn count(&self, label: Label) -> u32 {
        match label {
            Label::Normal => self.users,
            Label::Batch => self.batch_jobs,
            Label::Stuffing => self.stuffing,
            Label::Enumeration => self.enumeration,
            Label::TokenTheft => self.token_theft,
            Label::ScrapeBurst => self.scrape_burst,
            Label::SlowScrape => self.slow_scrape,
            Label::IdleReplay => self.idle_replay,
        }
    }
}
