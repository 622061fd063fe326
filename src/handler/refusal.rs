//! Why a publish was refused and its HTTP answer: [`Refusal`] (the
//! broker's or the journal's) and [`status`], the one place a
//! `BrokerError` becomes an HTTP status (the broker knows no HTTP). It
//! decides nothing and builds no response.

use crate::broker::BrokerError;
use crate::journal;

/// Why a local publish was refused: by the broker (names, bounds) or by
/// the journal (`--data-dir`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The broker refused it.
    Broker(BrokerError),
    /// The journal could not take it.
    Journal(journal::Refused),
}

impl From<BrokerError> for Refusal {
    fn from(e: BrokerError) -> Self {
        Refusal::Broker(e)
    }
}

impl Refusal {
    /// A message for the client.
    pub fn message(&self) -> String {
        match self {
            Refusal::Broker(e) => e.message(),
            Refusal::Journal(e) => e.message(),
        }
    }
    /// The HTTP status that goes with it.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Broker(e) => status(e),
            Refusal::Journal(journal::Refused::TooLarge { .. }) => 413,
            // Compaction catching up, or a disk that may recover: both pass.
            Refusal::Journal(journal::Refused::Full | journal::Refused::Failed(_)) => 503,
        }
    }
    /// Refused for its size (by a history bound or the journal's budget).
    pub fn too_large(&self) -> bool {
        matches!(
            self,
            Refusal::Broker(BrokerError::TooLarge { .. })
                | Refusal::Journal(journal::Refused::TooLarge { .. })
        )
    }
}

/// The HTTP status of a broker refusal.
pub fn status(e: &BrokerError) -> u16 {
    match e {
        BrokerError::BadName | BrokerError::Reserved => 400,
        BrokerError::NotFound => 404,
        BrokerError::TooLarge { .. } => 413,
        // This address's own share: others are still served.
        BrokerError::TooManyUnclaimedHere { .. } => 429,
        BrokerError::TooMany | BrokerError::TooManyUnclaimed | BrokerError::TooManySelectors(_) => {
            503
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_map_to_statuses() {
        let big = BrokerError::TooLarge {
            size: 2,
            limit: 1,
            bound: "x",
        };
        for (e, want) in [
            (BrokerError::BadName, 400),
            (BrokerError::Reserved, 400),
            (BrokerError::NotFound, 404),
            (big.clone(), 413),
            (BrokerError::TooMany, 503),
            (BrokerError::TooManyUnclaimed, 503),
            (BrokerError::TooManyUnclaimedHere { limit: 1 }, 429),
            (
                BrokerError::TooManySelectors(crate::broker::SelectorsFull::Peer),
                503,
            ),
        ] {
            assert_eq!(status(&e), want, "{e:?}");
            assert_eq!(Refusal::from(e).status(), want);
        }
        assert!(Refusal::from(big).too_large());
        let j = |r| Refusal::Journal(r);
        let huge = journal::Refused::TooLarge { size: 2, limit: 1 };
        assert_eq!(j(huge.clone()).status(), 413);
        assert!(j(huge.clone()).too_large());
        assert!(j(huge).message().contains("--journal-bytes"));
        assert_eq!(j(journal::Refused::Full).status(), 503);
        assert!(!j(journal::Refused::Full).too_large());
        assert_eq!(j(journal::Refused::Failed("disk".into())).status(), 503);
    }
}
