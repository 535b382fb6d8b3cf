//! The read-through cache in front of any store ([`CachedStore`]); the stores themselves are
//! crates of their own (`ferry-store-sqlite`, `ferry-aws`).

mod cached;
mod leased;

pub use cached::CachedStore;
pub use leased::{LeaseSetupError, LeasedAccounts};
