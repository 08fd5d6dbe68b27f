//! UnivaPay: the HTTP client for the charge GET, the lenient charge model, the
//! classification of everything that can go wrong into [`ErrorClass`]es the pass acts on,
//! and the [`Pacer`] that keeps the client inside UnivaPay's rate limits. Discovery's
//! requests (list pages, tokens) are in `listing`, on the same client and pacer.

mod client;
mod error;
mod listing;
mod model;
mod pacer;

pub use client::{Client, Fetched, RateLimit};
pub use error::{ApiError, ErrorClass};
pub use listing::{
    Listed, Listing, MAX_PAGE_LIMIT, Page, PageQuery, TokenFacts, TokenId, VerifiedCharge,
};
pub use model::{ChargeJson, MAX_AMOUNT, ProviderCharge, ProviderError};
pub use pacer::{Answer, Pacer, Ticket};
