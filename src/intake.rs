//! Intake: what happens to a transaction between its HTTP request and the dispatcher.
//!
//! [`parse`] reads the body (envelopes validated, one malformed event never fails the rest),
//! [`GroupCommit`] commits concurrent transactions together in one database transaction and
//! hands the committed batches over ([`Handoff`]) in commit order, so the dispatcher does not
//! read them back. The HTTP handler answers 200 only after its transaction's commit.

mod group_commit;
mod handoff;
mod parse;

pub(crate) use group_commit::GroupCommit;
#[cfg(any(test, feature = "testing"))]
pub(crate) use handoff::MAX_QUEUED;
pub(crate) use handoff::{Handoff, HandoffReceivers, LiveBatch, LiveState, Routed};
#[cfg(feature = "fuzzing")]
pub(crate) use parse::parse;
pub(crate) use parse::{BadTransaction, not_utf8, parse_text};
