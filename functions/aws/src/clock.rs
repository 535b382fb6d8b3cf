//! Time and randomness for the adapter (the rules in `ferry-core` take both as arguments).

use std::time::{SystemTime, UNIX_EPOCH};

pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // Only ids and request tokens come from here, never secrets: on the (vanishingly rare)
    // failure of the OS generator, the clock keeps them unique enough.
    if getrandom::fill(&mut bytes).is_err() {
        let seed = unix_millis().to_le_bytes();
        for (index, byte) in bytes.iter_mut().enumerate() {
            *byte = seed[index % seed.len()] ^ (index as u8);
        }
    }
    bytes
}

/// A token for one `TransactWriteItems` attempt: the SDK's own retries of that attempt reuse
/// it, so DynamoDB applies the attempt at most once.
pub fn request_token() -> String {
    random_bytes::<16>()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}
