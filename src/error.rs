//! [`BridgeError`]: what a bridge's handlers return.

use std::fmt;

/// An error a bridge handler returns.
///
/// Any `std::error::Error` converts into it with `?`. By default a failed event is retried with
/// backoff and parked after the configured number of attempts; [`BridgeError::permanent`] parks
/// it at once (for errors a retry cannot fix, such as content the remote network refuses).
pub struct BridgeError {
    source: Box<dyn std::error::Error + Send + Sync + 'static>,
    permanent: bool,
    unsupported: bool,
}

impl BridgeError {
    /// An error worth retrying.
    pub fn new(message: impl fmt::Display) -> Self {
        Self { source: message.to_string().into(), permanent: false, unsupported: false }
    }

    /// An error that a retry cannot fix: the event is parked at once.
    pub fn permanent(message: impl fmt::Display) -> Self {
        Self { source: message.to_string().into(), permanent: true, unsupported: false }
    }

    /// The bridge does not offer this at all (an optional hook left as is): permanent, and
    /// answered by the provisioning API with 501.
    pub fn unsupported(message: impl fmt::Display) -> Self {
        Self { source: message.to_string().into(), permanent: true, unsupported: true }
    }

    /// Whether this is [`BridgeError::unsupported`].
    pub fn is_unsupported(&self) -> bool {
        self.unsupported
    }

    /// Marks this error as one a retry cannot fix.
    #[must_use]
    pub fn into_permanent(mut self) -> Self {
        self.permanent = true;
        self
    }

    /// Whether retrying is pointless.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }

    /// The underlying error.
    pub fn source_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.source
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for BridgeError {
    fn from(e: E) -> Self {
        Self { source: Box::new(e), permanent: false, unsupported: false }
    }
}

impl fmt::Debug for BridgeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BridgeError")
            .field("error", &self.source.to_string())
            .field("permanent", &self.permanent)
            .finish()
    }
}

impl fmt::Display for BridgeError {
    /// The error and its causes, `: `-separated; a cause whose text the message already holds
    /// (an error that prints its source, or forwards to it) is not repeated.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::util::error_chain(&*self.source))
    }
}

/// The result of bridge handlers.
pub type BridgeResult<T = ()> = Result<T, BridgeError>;
