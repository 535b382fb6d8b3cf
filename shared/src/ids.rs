//! Identifiers. Request ids are UUIDv7 (time-ordered); object ids are a short type prefix plus a
//! UUIDv7, so an id says what it names and sorts by creation time.
//!
//! The clock and the random bytes are arguments: callers at the edges supply them.

use uuid::{Builder, Uuid};

/// Random bytes needed for one UUIDv7 (its 74 random bits, rounded up).
pub const RANDOM_BYTES: usize = 10;

/// A UUIDv7 from a Unix time in milliseconds and ten random bytes.
pub fn uuid_v7(unix_millis: u64, random: [u8; RANDOM_BYTES]) -> Uuid {
    Builder::from_unix_timestamp_millis(unix_millis, &random).into_uuid()
}

/// The request id carried in `x-request-id` and used as the idempotency key of metering.
pub fn request_id(unix_millis: u64, random: [u8; RANDOM_BYTES]) -> String {
    uuid_v7(unix_millis, random).hyphenated().to_string()
}

/// What an object id names; the prefix makes ids self-describing in logs and APIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    Tenant,
    Key,
    Completion,
    Usage,
    Transaction,
    File,
    Batch,
}

impl IdKind {
    pub fn prefix(self) -> &'static str {
        match self {
            IdKind::Tenant => "tnt",
            IdKind::Key => "key",
            IdKind::Completion => "chatcmpl",
            IdKind::Usage => "use",
            IdKind::Transaction => "txn",
            IdKind::File => "file",
            IdKind::Batch => "batch",
        }
    }
}

/// `tnt_0190f3...`: a prefix and a UUIDv7 without hyphens.
pub fn object_id(kind: IdKind, unix_millis: u64, random: [u8; RANDOM_BYTES]) -> String {
    format!(
        "{}_{}",
        kind.prefix(),
        uuid_v7(unix_millis, random).simple()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_version_7_and_sort_by_time() {
        let earlier = uuid_v7(1_700_000_000_000, [0xff; RANDOM_BYTES]);
        let later = uuid_v7(1_700_000_000_001, [0x00; RANDOM_BYTES]);
        assert_eq!(earlier.get_version_num(), 7);
        assert!(earlier < later);
        assert_eq!(request_id(1, [7; RANDOM_BYTES]).len(), 36);
    }

    #[test]
    fn object_ids_carry_their_kind() {
        let cases = [
            (IdKind::Tenant, "tnt_"),
            (IdKind::Key, "key_"),
            (IdKind::Usage, "use_"),
        ];
        for (kind, prefix) in cases {
            let id = object_id(kind, 1_700_000_000_000, [1; RANDOM_BYTES]);
            assert!(id.starts_with(prefix), "{id}");
            assert_eq!(id.len(), prefix.len() + 32);
        }
    }
}
