//! UnivaPay: the HTTP client for the charge GET, the lenient charge model, and the
//! classification of everything that can go wrong into [`ErrorClass`]es the pass acts on.

mod client;
mod error;
mod model;

pub use client::{Client, Fetched, RateLimit};
pub use error::{ApiError, ErrorClass};
pub use model::{ChargeJson, MAX_AMOUNT, ProviderCharge, ProviderError};
