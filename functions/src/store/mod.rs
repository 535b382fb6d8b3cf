//! Store adapters: implementations of the [`ferry_core::ports`] storage traits.

mod cached;
mod objects;
mod sqlite;

pub use cached::CachedStore;
pub use objects::LocalObjectStore;
pub use sqlite::{Durability, SqliteOptions, SqliteStore};
