//! UnivaPay: the HTTP client for the charge GET, the lenient charge model, the
//! classification of everything that can go wrong into `ErrorClass`es the pass acts on,
//! the `Pacer` that keeps the client inside UnivaPay's rate limits, and the client's
//! [`ClientStats`] (requests by result, pacer waits) for the metrics. Discovery's
//! requests (list pages, tokens) are in `listing`, on the same client and pacer.

mod client;
mod error;
mod listing;
mod model;
mod pacer;
mod stats;

pub use client::Client;
pub(crate) use client::RateLimit;
pub(crate) use error::{ApiError, ErrorClass};
pub use listing::MAX_PAGE_LIMIT;
pub(crate) use listing::{Listed, Listing, Page, PageQuery, TokenFacts, TokenId, VerifiedCharge};
pub(crate) use model::MAX_AMOUNT;
pub(crate) use model::ProviderCharge;
pub(crate) use pacer::{PauseCause, Paused, Ticket};
pub use stats::ClientStats;
pub(crate) use stats::RequestResult;
