//! `PUT /_matrix/app/v1/transactions/{txnId}`
//!
//! The homeserver pushes events in transactions ([spec]). A transaction is answered 200 only after
//! its events are committed to the inbox in one database transaction; the bridge handles them
//! afterwards. Ephemeral data (typing, receipts, presence, to-device, MSC3202 device data) is not
//! stored: it is queued in memory for the bridge once the commit succeeded. The exception is
//! the bridge device's part (with the `encryption` feature), committed before the events.
//!
//! [spec]: https://spec.matrix.org/v1.19/application-service-api/#put_matrixappv1transactionstxnid

use std::sync::Arc;

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State},
};

use super::{ServerState, auth::HsAuthed, error::ApiError};
use crate::{
    bridge::Bridge,
    intake::{BadTransaction, not_utf8, parse_text},
    store::AcceptOutcome,
};

/// # `PUT /_matrix/app/v1/transactions/{txnId}`
///
/// Stores the events durably, then answers `{}`.
pub(crate) async fn push_events<B: Bridge>(
    _: HsAuthed,
    State(state): State<Arc<ServerState<B>>>,
    Path(txn_id): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    if txn_id.chars().any(char::is_control) {
        return Err(ApiError::invalid_param("Control character in the transaction ID"));
    }
    let span = tracing::info_span!("txn", %txn_id, events = tracing::field::Empty);
    let _enter = span.enter();
    // The body as text, shared with the group commit, which slices events out of it.
    // (`Vec::from` takes the buffer over when nothing else holds it, and copies it otherwise.)
    let body = match String::from_utf8(Vec::from(body)) {
        Ok(text) => Arc::new(text),
        Err(e) => return Err(not_utf8(e.utf8_error()).into()),
    };
    let mut parsed = parse_text(&body)?;
    span.record("events", parsed.events.len());
    for (event_id, reason) in &parsed.rejected {
        let event_id = event_id.as_deref().unwrap_or("?");
        tracing::warn!(event_id, %reason, "skipping malformed event");
    }
    drop(_enter);
    // The bridge device's part is committed first: a transaction is answered only once both
    // are stored, and one the homeserver sends again stores its part once.
    #[cfg(feature = "encryption")]
    crate::crypto::stash_input(&state.ctx, &txn_id, &parsed.batch).await.map_err(|e| {
        tracing::error!(parent: &span, error = %e, "could not store the bridge device's input");
        ApiError::internal()
    })?;
    let outcome = state
        .group_commit
        .store(
            state.ctx.store(),
            &txn_id,
            &parsed.hash,
            &body,
            &parsed.events,
            std::mem::take(&mut parsed.parsed),
        )
        .await
        .map_err(|e| {
            tracing::error!(parent: &span, error = %e, "could not store transaction");
            state.ctx.metrics().transaction("error", parsed.events.len());
            ApiError::internal()
        })?;
    match outcome {
        AcceptOutcome::Duplicate => {
            state.ctx.metrics().transaction("duplicate", parsed.events.len());
            tracing::debug!(parent: &span, "duplicate transaction");
        }
        AcceptOutcome::Stored { new_events } => {
            state.ctx.metrics().transaction("stored", parsed.events.len());
            tracing::debug!(parent: &span, new_events, "transaction stored");
            if !parsed.batch.is_empty() {
                state.handoff.queue_ephemeral(parsed.batch).await;
            }
        }
    }
    Ok(Json(serde_json::json!({})))
}

impl From<BadTransaction> for ApiError {
    fn from(e: BadTransaction) -> Self {
        let errcode = e.errcode();
        let (BadTransaction::NotJson(message) | BadTransaction::BadJson(message)) = e;
        Self::new(axum::http::StatusCode::BAD_REQUEST, errcode, message)
    }
}
