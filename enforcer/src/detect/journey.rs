//! The part of a session's history the sequence model reads: its collapsed operations since the
//! start of the current *journey*. A session may hold several journeys (a customer checks a
//! balance, comes back ten minutes later and pays someone): a pause of at least
//! `learning.journeyGap` ends one, and what follows is learned and judged after a *journey
//! start* — the session-start marker twice, [`SESSION_START`] [`SESSION_START`] — not as the
//! next step of the journey before the pause. Its suffix is the session-start context, so
//! back-off sees both what starts sessions and, in the longer context, what customers do
//! when they come back (often without the steps the app still shows, such as the account list).

use crate::model::SESSION_START;
use crate::session::RecentOp;

/// Where the current journey of a session starts, as seen from its recent operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JourneyStart {
    /// The recent operations hold the whole session: it starts at the first of them.
    SessionStart,
    /// The session paused for at least the journey gap before `recent[index]` (`index` =
    /// `recent.len()` when the pause is right before this request; `idle_ms` = 0 when the
    /// earlier operations are older than the session history keeps).
    AfterIdle { index: usize, idle_ms: u64 },
    /// Only the tail of a longer journey is known.
    Unknown,
}

/// Finds the start of the current journey. `recent`: the session's operations before this
/// request, oldest first (only those the session history still keeps); `seen`: exchanges the
/// session had before this one.
pub fn journey_start(recent: &[RecentOp], seen: u32, now_ms: u64, gap_ms: u64) -> JourneyStart {
    let gap_ms = gap_ms.max(1);
    if let Some(last) = recent.last() {
        let idle = now_ms.saturating_sub(last.at_ms);
        if idle >= gap_ms {
            return JourneyStart::AfterIdle {
                index: recent.len(),
                idle_ms: idle,
            };
        }
    } else if seen > 0 {
        // Everything earlier has aged out of the session history: a long pause.
        return JourneyStart::AfterIdle {
            index: 0,
            idle_ms: 0,
        };
    }
    for i in (1..recent.len()).rev() {
        let idle = recent[i].at_ms.saturating_sub(recent[i - 1].at_ms);
        if idle >= gap_ms {
            return JourneyStart::AfterIdle {
                index: i,
                idle_ms: idle,
            };
        }
    }
    if u32::try_from(recent.len()).is_ok_and(|n| n >= seen) {
        JourneyStart::SessionStart
    } else {
        JourneyStart::Unknown
    }
}

/// The current journey's collapsed operations as model indices, oldest first, with
/// [`SESSION_START`] first when the session's start is known, twice after an idle gap.
/// Operations the model does not know (`index_of` gives `None`) cut the history: only what
/// follows them is used, without a start marker.
pub fn journey_history(
    recent: &[RecentOp],
    seen: u32,
    now_ms: u64,
    gap_ms: u64,
    index_of: impl Fn(u32) -> Option<u16>,
) -> Vec<u16> {
    let (from, markers) = match journey_start(recent, seen, now_ms, gap_ms) {
        JourneyStart::SessionStart => (0, 1),
        JourneyStart::AfterIdle { index, .. } => (index, 2),
        JourneyStart::Unknown => (0, 0),
    };
    let mut ops: Vec<u16> = Vec::with_capacity(recent.len().saturating_sub(from) + 1);
    let mut cut = false;
    for r in recent.iter().skip(from) {
        match index_of(r.op) {
            Some(index) => {
                if ops.last() != Some(&index) {
                    ops.push(index);
                }
            }
            None => {
                ops.clear();
                cut = true;
            }
        }
    }
    if !cut {
        ops.splice(0..0, std::iter::repeat_n(SESSION_START, markers));
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(list: &[(u32, u64)]) -> Vec<RecentOp> {
        list.iter()
            .map(|(op, at)| RecentOp {
                op: *op,
                at_ms: *at,
            })
            .collect()
    }

    const GAP: u64 = 300_000;

    #[test]
    fn whole_session_starts_with_the_marker_and_collapses_repeats() {
        let recent = ops(&[(1, 1_000), (2, 2_000), (2, 3_000), (3, 4_000)]);
        let h = journey_history(&recent, 4, 5_000, GAP, |op| u16::try_from(op).ok());
        assert_eq!(h, vec![SESSION_START, 1, 2, 3]);
        // Only the tail of the session is kept: no marker.
        let h = journey_history(&recent, 12, 5_000, GAP, |op| u16::try_from(op).ok());
        assert_eq!(h, vec![1, 2, 3]);
        assert_eq!(
            journey_start(&recent, 12, 5_000, GAP),
            JourneyStart::Unknown
        );
    }

    #[test]
    fn a_long_pause_starts_a_new_journey() {
        // A balance check, 7 minutes idle, then two steps of a new task.
        let recent = ops(&[(1, 0), (2, 1_000), (5, 421_000), (6, 422_000)]);
        assert_eq!(
            journey_start(&recent, 30, 423_000, GAP),
            JourneyStart::AfterIdle {
                index: 2,
                idle_ms: 420_000
            }
        );
        let h = journey_history(&recent, 30, 423_000, GAP, |op| u16::try_from(op).ok());
        assert_eq!(h, vec![SESSION_START, SESSION_START, 5, 6]);
        // The pause right before this request: only the journey start.
        let h = journey_history(&recent, 30, 422_000 + GAP, GAP, |op| u16::try_from(op).ok());
        assert_eq!(h, vec![SESSION_START, SESSION_START]);
        // Everything aged out of the session history.
        let h = journey_history(&[], 30, 10_000_000, GAP, |op| u16::try_from(op).ok());
        assert_eq!(h, vec![SESSION_START, SESSION_START]);
        // A brand-new session with nothing before it.
        let h = journey_history(&[], 0, 10_000_000, GAP, |op| u16::try_from(op).ok());
        assert_eq!(h, vec![SESSION_START]);
        // Short pauses do not cut.
        let h = journey_history(&recent, 4, 423_000, 1_000_000, |op| u16::try_from(op).ok());
        assert_eq!(h, vec![SESSION_START, 1, 2, 5, 6]);
    }

    #[test]
    fn unknown_operations_cut_the_history() {
        let recent = ops(&[(1, 0), (99, 1_000), (2, 2_000)]);
        let h = journey_history(&recent, 3, 3_000, GAP, |op| {
            (op != 99).then(|| u16::try_from(op).ok()).flatten()
        });
        assert_eq!(h, vec![2]);
    }
}
