//! Errors of an intent's actions: a homeserver request, the state store, or the room's rules.

use reqwest::StatusCode;
use ruma::{RoomVersionId, api::error::ErrorKind};

use crate::{client, store::StoreError};

/// The result type of an intent's actions.
pub type Result<T, E = IntentError> = std::result::Result<T, E>;

/// Why an intent's action failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IntentError {
    /// A request to the homeserver failed; [`IntentError::kind`] has the Matrix error.
    #[error(transparent)]
    Client(#[from] client::Error),
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The room's power levels do not allow the change (the bot's own level is too low).
    #[error("not permitted: {0}")]
    NotPermitted(String),
    /// Room state (cached, or fetched from the homeserver) could not be read or written as JSON.
    #[error("malformed room state: {0}")]
    MalformedState(#[from] serde_json::Error),
    /// The room has a version whose rules are unknown here, so its power levels cannot be
    /// worked out.
    #[error("room version {0} is not supported")]
    UnsupportedRoomVersion(RoomVersionId),
    /// The room is encrypted and the event could not be encrypted: the bridge device has not
    /// started yet, or sharing the room key failed. Nothing was sent in plaintext.
    #[error("cannot encrypt for the room: {0}")]
    Encryption(String),
}

impl IntentError {
    /// ruma's parsed [`ErrorKind`] when the homeserver refused a request with a standard Matrix
    /// error (`ErrorKind::Forbidden`, `ErrorKind::UserInUse`, ...).
    pub fn kind(&self) -> Option<&ErrorKind> {
        self.client_error().and_then(client::Error::kind)
    }

    /// The HTTP status of the homeserver's refusal, if it refused.
    pub fn status(&self) -> Option<StatusCode> {
        self.client_error().and_then(client::Error::status)
    }

    /// The request's error, when a request failed.
    pub fn client_error(&self) -> Option<&client::Error> {
        match self {
            Self::Client(err) => Some(err),
            _ => None,
        }
    }
}
