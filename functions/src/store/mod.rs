//! Store adapters: implementations of [`ferry_core::ports::Store`].

mod sqlite;

pub use sqlite::SqliteStore;
