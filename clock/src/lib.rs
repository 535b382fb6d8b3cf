//! Time and randomness for the functions and the store adapters; the pure rules in
//! `ferry-core` take both as arguments.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

pub fn unix_seconds() -> u64 {
    unix_millis() / 1000
}

/// Bytes from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // The OS generator failing is unrecoverable and vanishingly rare; fall back to the clock so
    // ids stay unique rather than take the process down. Secrets are made by `secret_bytes`.
    if getrandom::fill(&mut bytes).is_err() {
        let seed = unix_millis().to_le_bytes();
        for (index, byte) in bytes.iter_mut().enumerate() {
            *byte = seed[index % seed.len()] ^ (index as u8);
        }
    }
    bytes
}

/// Bytes for secrets: failure to get real randomness is an error, never a fallback.
pub fn secret_bytes<const N: usize>() -> Result<[u8; N], getrandom::Error> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes)?;
    Ok(bytes)
}

pub fn new_request_id() -> String {
    ferry_core::ids::request_id(unix_millis(), random_bytes())
}

pub fn random_u64() -> u64 {
    u64::from_le_bytes(random_bytes())
}
