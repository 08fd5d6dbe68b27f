//! UnivaPay: the HTTP client for the charge GET, the lenient charge model, the
//! classification of everything that can go wrong into [`ErrorClass`]es the pass acts on,
//! and the [`Pacer`] that keeps the client inside UnivaPay's rate limits.

mod client;
mod error;
mod model;
mod pacer;

pub use client::{Client, Fetched, RateLimit};
pub use error::{ApiError, ErrorClass};
pub use model::{ChargeJson, MAX_AMOUNT, ProviderCharge, ProviderError};
pub use pacer::{ASSUMED_REFILL_PER_MINUTE, Answer, Pacer, PauseCause, Paused, Ticket};
