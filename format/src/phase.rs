//! The phases of a flash, as the operator and machine-readable events name them.

use serde::{Deserialize, Serialize};

/// One phase of a flash. The lowercase names are part of the event format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Starting,
    Searching,
    Writing,
    Verifying,
    Finishing,
    Success,
    Failure,
}

impl Phase {
    pub const ALL: [Phase; 7] = [
        Phase::Starting,
        Phase::Searching,
        Phase::Writing,
        Phase::Verifying,
        Phase::Finishing,
        Phase::Success,
        Phase::Failure,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Searching => "searching",
            Phase::Writing => "writing",
            Phase::Verifying => "verifying",
            Phase::Finishing => "finishing",
            Phase::Success => "success",
            Phase::Failure => "failure",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Phase {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Phase::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown phase {s:?}; expected one of: starting, searching, writing, verifying, finishing, success, failure"
                )
            })
    }
}
