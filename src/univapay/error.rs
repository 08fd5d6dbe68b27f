//! What can go wrong with one charge GET, sorted into the kinds the pass acts on.

use std::time::Duration;

use crate::domain::text::{MAX_ERROR, clean};

/// One failed charge GET. Messages never contain credentials: the request URL holds only
/// the store and charge ids, and the Authorization header is never formatted. Text that
/// came from the network is cleaned and capped when the error is made ([`ApiError::malformed`],
/// [`ApiError::connect`]), so every message is one line of at most a few hundred
/// characters, whatever the answer held.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("cannot connect to UnivaPay: {0}")]
    Connect(String),
    #[error("no complete answer from UnivaPay within {0:?}")]
    Timeout(Duration),
    #[error("rate limited by UnivaPay (429)")]
    RateLimited { retry_after: Option<Duration> },
    #[error("UnivaPay server error {0}")]
    Server(u16),
    #[error("credentials rejected by UnivaPay ({status}{})", code_suffix(.code))]
    Auth { status: u16, code: Option<String> },
    #[error("charge not found at UnivaPay (404)")]
    NotFound,
    #[error("malformed answer from UnivaPay: {0}")]
    Malformed(String),
    #[error("request refused by UnivaPay ({status}{})", code_suffix(.code))]
    Rejected { status: u16, code: Option<String> },
}

fn code_suffix(code: &Option<String>) -> String {
    code.as_deref().map(|c| format!(" {c}")).unwrap_or_default()
}

/// The decision-relevant kind of an [`ApiError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorClass {
    /// Try again later with backoff: connect, timeout, 429, 5xx.
    Transient,
    /// 401/403: the whole pass stops.
    Auth,
    /// 404: counted; after `not_found_limit` in a row the charge is no longer checked.
    NotFound,
    /// The answer could not be used (unparseable, wrong id or store).
    Malformed,
    /// Any other 4xx or an unexpected redirect.
    Rejected,
}

impl ApiError {
    /// An unusable answer, `why` cleaned and capped at [`MAX_ERROR`] characters (a parse
    /// error can quote the offending value, which the answer chose).
    pub(crate) fn malformed(why: impl AsRef<str>) -> ApiError {
        ApiError::Malformed(clean(why.as_ref(), MAX_ERROR))
    }

    /// A transport failure, `why` cleaned and capped like [`malformed`](Self::malformed).
    pub(crate) fn connect(why: impl AsRef<str>) -> ApiError {
        ApiError::Connect(clean(why.as_ref(), MAX_ERROR))
    }

    pub(crate) fn class(&self) -> ErrorClass {
        match self {
            ApiError::Connect(_)
            | ApiError::Timeout(_)
            | ApiError::RateLimited { .. }
            | ApiError::Server(_) => ErrorClass::Transient,
            ApiError::Auth { .. } => ErrorClass::Auth,
            ApiError::NotFound => ErrorClass::NotFound,
            ApiError::Malformed(_) => ErrorClass::Malformed,
            ApiError::Rejected { .. } => ErrorClass::Rejected,
        }
    }

    /// True when the request never got an HTTP answer (the API could not be reached).
    pub(crate) fn is_unreachable(&self) -> bool {
        matches!(self, ApiError::Connect(_) | ApiError::Timeout(_))
    }

    /// The server's `Retry-After`, when it sent one.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::RateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }
}
