//! Store adapters: implementations of the [`ferry_core::ports`] storage traits.

mod objects;
mod sqlite;

pub use objects::LocalObjectStore;
pub use sqlite::{Durability, SqliteOptions, SqliteStore};
