//! A local append-only journal: what a gateway has promised but not yet written to the store.
//!
//! Appends are group-committed on a thread of their own: every append already waiting shares
//! one `write` (and, at [`Durability::PowerLoss`], one `fdatasync`), and each is answered only
//! after its group is written. Records are framed (`length`, `crc32`, payload), so a crash in
//! the middle of a write leaves a torn tail that [`Journal::open`] finds, cuts off, and does not
//! replay: a record is either whole and replayed or was never acknowledged.
//!
//! The journal is kept in segments named by the sequence number of their first record. A
//! reader that has written records to the store says so with [`Journal::drained`]; segments
//! whose every record is drained are deleted. Replaying a record twice is the store's to make
//! harmless (every record is idempotent by its request id), so the journal never needs to know
//! exactly which records of a segment were drained before a crash.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

/// Bytes before a record's payload: its length and its CRC-32, both little-endian.
const FRAME_HEADER: usize = 8;
/// The largest payload a record may have; a length beyond it is a torn or foreign tail.
pub const MAX_RECORD: usize = 1 << 24;
/// A segment is closed, and a new one begun, once it is this large.
const SEGMENT_BYTES: u64 = 8 << 20;
/// Appends written together at most.
const MAX_GROUP: usize = 1024;
const SUFFIX: &str = "journal";

/// What an acknowledged append survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The record is in the operating system's page cache: it survives the process, not the
    /// machine.
    ProcessCrash,
    /// The record is on the disk (`fdatasync`) before it is acknowledged.
    PowerLoss,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal I/O: {0}")]
    Io(#[from] io::Error),
    #[error("a journal record may be at most {MAX_RECORD} bytes; this one is {0}")]
    TooLarge(usize),
    #[error("the journal can no longer be written: {0}")]
    Broken(String),
}

/// A record read back at [`Journal::open`]: appended, perhaps not yet drained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    pub sequence: u64,
    pub payload: Vec<u8>,
}

/// A segment no longer written to.
#[derive(Debug)]
struct Closed {
    path: PathBuf,
    /// The sequence number of its last record.
    last: u64,
}

struct Append {
    payload: Vec<u8>,
    reply: oneshot::Sender<Result<u64, JournalError>>,
}

/// A handle on the journal; clones share its writer.
#[derive(Clone)]
pub struct Journal {
    appends: Sender<Append>,
    closed: Arc<Mutex<Vec<Closed>>>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Journal").finish_non_exhaustive()
    }
}

impl Journal {
    /// Opens the journal in `directory` (made if missing), cuts off any torn tail, and returns
    /// every whole record still in it, oldest first, to be drained again.
    pub fn open(
        directory: &Path,
        durability: Durability,
    ) -> Result<(Journal, Vec<Replayed>), JournalError> {
        fs::create_dir_all(directory)?;
        let mut replayed = Vec::new();
        let mut closed = Vec::new();
        let mut next = 0;
        for (first, path) in segments(directory)? {
            let payloads = read_segment(&path)?;
            if payloads.is_empty() {
                fs::remove_file(&path)?;
                continue;
            }
            let count = u64::try_from(payloads.len()).unwrap_or(u64::MAX);
            for (offset, payload) in (0..).zip(payloads) {
                replayed.push(Replayed {
                    sequence: first + offset,
                    payload,
                });
            }
            next = first + count;
            closed.push(Closed {
                path,
                last: next - 1,
            });
        }
        let closed = Arc::new(Mutex::new(closed));
        let (appends, receiver) = mpsc::channel();
        let writer = Writer {
            directory: directory.to_owned(),
            durability,
            next,
            current: None,
            closed: closed.clone(),
        };
        std::thread::Builder::new()
            .name("ferry-journal".into())
            .spawn(move || writer.run(&receiver))?;
        Ok((Journal { appends, closed }, replayed))
    }

    /// Appends one record; answers with its sequence number once it is as durable as the
    /// journal was opened to make it.
    pub async fn append(&self, payload: Vec<u8>) -> Result<u64, JournalError> {
        if payload.len() > MAX_RECORD {
            return Err(JournalError::TooLarge(payload.len()));
        }
        let (reply, answer) = oneshot::channel();
        self.appends
            .send(Append { payload, reply })
            .map_err(|_| JournalError::Broken("its writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| JournalError::Broken("its writer has stopped".into()))?
    }

    /// Every record up to and including `sequence` is in the store: the segments holding only
    /// such records are deleted.
    pub fn drained(&self, sequence: u64) -> Result<(), JournalError> {
        let mut closed = self.closed.lock().unwrap_or_else(PoisonError::into_inner);
        while closed
            .first()
            .is_some_and(|segment| segment.last <= sequence)
        {
            let segment = closed.remove(0);
            match fs::remove_file(&segment.path) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => {
                    closed.insert(0, segment);
                    return Err(error.into());
                }
            }
        }
        Ok(())
    }
}

/// A journal directory shared by processes (replicas over one data directory): each writes a
/// journal of its own, in a subdirectory it holds locked for as long as it lives. The lock
/// goes with the process however it ends, so a subdirectory no process holds is an orphan: a
/// process that died before draining it. A live process adopts orphans ([`orphans`]), writes
/// their records to the store and removes them.
#[derive(Debug)]
pub struct Owned {
    directory: PathBuf,
    /// Held locked while this process lives.
    _lock: File,
}

const LOCK_FILE: &str = "lock";

impl Owned {
    /// Where this process's journal goes.
    pub fn directory(&self) -> &Path {
        &self.directory
    }

    /// Removes this process's journal: every record in it is in the store.
    pub fn remove(self) -> io::Result<()> {
        fs::remove_dir_all(&self.directory)
    }
}

/// Makes and locks a journal directory of this process's own under `root`. It is made under a
/// hidden name and renamed once locked, so no other process can take it for an orphan.
pub fn claim(root: &Path, name: &str) -> io::Result<Owned> {
    fs::create_dir_all(root)?;
    let making = root.join(format!(".{name}"));
    fs::create_dir_all(&making)?;
    let lock = File::create(making.join(LOCK_FILE))?;
    lock.lock()?;
    let directory = root.join(name);
    fs::rename(&making, &directory)?;
    Ok(Owned {
        directory,
        _lock: lock,
    })
}

/// A journal directory whose process is gone, locked by this one until it is removed.
#[derive(Debug)]
pub struct Orphan {
    directory: PathBuf,
    _lock: File,
}

impl Orphan {
    /// Its whole records, oldest first (a torn tail cut off).
    pub fn records(&self) -> io::Result<Vec<Vec<u8>>> {
        let mut records = Vec::new();
        for (_, path) in segments(&self.directory)? {
            records.extend(read_segment(&path)?);
        }
        Ok(records)
    }

    /// Removes it: its records are in the store.
    pub fn remove(self) -> io::Result<()> {
        fs::remove_dir_all(&self.directory)
    }
}

/// The journal directories under `root` that no live process holds (none of them `own`).
pub fn orphans(root: &Path, own: &Owned) -> io::Result<Vec<Orphan>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(root)? {
        let directory = entry?.path();
        let hidden = directory
            .file_name()
            .and_then(|name| name.to_str())
            .is_none_or(|name| name.starts_with('.'));
        if hidden || directory == own.directory || !directory.is_dir() {
            continue;
        }
        let lock = match File::open(directory.join(LOCK_FILE)) {
            Ok(lock) => lock,
            // Removed meanwhile by the process that adopted it.
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error),
        };
        match lock.try_lock() {
            Ok(()) => found.push(Orphan {
                directory,
                _lock: lock,
            }),
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(error)) => return Err(error),
        }
    }
    Ok(found)
}

/// The segment files of `directory`, by their first sequence number.
fn segments(directory: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(directory)? {
        let path = entry?.path();
        let first = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_suffix(SUFFIX)?.strip_suffix('.'))
            .and_then(|stem| stem.parse::<u64>().ok());
        if let Some(first) = first {
            found.push((first, path));
        }
    }
    found.sort();
    Ok(found)
}

fn segment_path(directory: &Path, first: u64) -> PathBuf {
    directory.join(format!("{first:020}.{SUFFIX}"))
}

/// Frames `payload`: its length, its CRC-32, itself.
pub fn frame(payload: &[u8], into: &mut Vec<u8>) {
    let length = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    into.extend_from_slice(&length.to_le_bytes());
    into.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    into.extend_from_slice(payload);
}

/// The whole records at the start of `bytes`, and where the first torn or foreign byte is.
pub fn unframe(bytes: &[u8]) -> (Vec<Vec<u8>>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + FRAME_HEADER) {
        let word = |range: std::ops::Range<usize>| {
            let mut four = [0u8; 4];
            four.copy_from_slice(&header[range]);
            u32::from_le_bytes(four)
        };
        let length = usize::try_from(word(0..4)).unwrap_or(usize::MAX);
        if length > MAX_RECORD {
            break;
        }
        let start = at + FRAME_HEADER;
        let Some(payload) = bytes.get(start..start + length) else {
            break;
        };
        if crc32fast::hash(payload) != word(4..8) {
            break;
        }
        records.push(payload.to_vec());
        at = start + length;
    }
    (records, at)
}

/// Reads a segment's whole records and cuts off whatever follows them.
fn read_segment(path: &Path) -> io::Result<Vec<Vec<u8>>> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let (records, whole) = unframe(&bytes);
    if whole < bytes.len() {
        file.set_len(u64::try_from(whole).unwrap_or(u64::MAX))?;
        file.sync_all()?;
    }
    Ok(records)
}

struct Writer {
    directory: PathBuf,
    durability: Durability,
    /// The sequence number the next record gets.
    next: u64,
    /// The segment being written: its file, its first sequence number, its length.
    current: Option<(File, u64, u64)>,
    closed: Arc<Mutex<Vec<Closed>>>,
}

impl Writer {
    fn run(mut self, appends: &Receiver<Append>) {
        let mut broken: Option<String> = None;
        while let Ok(first) = appends.recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match appends.try_recv() {
                    Ok(append) => group.push(append),
                    Err(_) => break,
                }
            }
            if let Some(reason) = &broken {
                for append in group {
                    let _ = append.reply.send(Err(JournalError::Broken(reason.clone())));
                }
                continue;
            }
            match self.write_group(&group) {
                Ok(first_sequence) => {
                    for (sequence, append) in (first_sequence..).zip(group) {
                        let _ = append.reply.send(Ok(sequence));
                    }
                }
                Err(error) => {
                    let reason = error.to_string();
                    // A group that may be half written must not be followed by more: the torn
                    // part would hide them from replay. Cut it off, or stop writing.
                    if self.cut_back().is_err() {
                        broken = Some(reason.clone());
                    }
                    for append in group {
                        let _ = append.reply.send(Err(JournalError::Broken(reason.clone())));
                    }
                }
            }
        }
    }

    /// Writes a group as one write; the sequence number of its first record.
    fn write_group(&mut self, group: &[Append]) -> io::Result<u64> {
        let size: usize = group
            .iter()
            .map(|append| append.payload.len() + FRAME_HEADER)
            .sum();
        let mut bytes = Vec::with_capacity(size);
        for append in group {
            frame(&append.payload, &mut bytes);
        }
        self.rotate_if_full();
        let (file, _, length) = match &mut self.current {
            Some(current) => current,
            None => {
                let path = segment_path(&self.directory, self.next);
                let file = OpenOptions::new()
                    .create_new(true)
                    .append(true)
                    .open(&path)?;
                if self.durability == Durability::PowerLoss {
                    // The new file's name must survive too.
                    File::open(&self.directory)?.sync_all()?;
                }
                self.current.insert((file, self.next, 0))
            }
        };
        file.write_all(&bytes)?;
        if self.durability == Durability::PowerLoss {
            file.sync_data()?;
        }
        *length += u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        let first = self.next;
        self.next += u64::try_from(group.len()).unwrap_or(u64::MAX);
        Ok(first)
    }

    /// Closes the current segment once it is full, so that draining can delete it.
    fn rotate_if_full(&mut self) {
        if self
            .current
            .as_ref()
            .is_some_and(|(_, _, length)| *length >= SEGMENT_BYTES)
            && let Some((_, first, _)) = self.current.take()
        {
            self.closed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Closed {
                    path: segment_path(&self.directory, first),
                    last: self.next - 1,
                });
        }
    }

    /// Truncates the current segment back to its last whole group.
    fn cut_back(&mut self) -> io::Result<()> {
        match &mut self.current {
            Some((file, _, length)) => file.set_len(*length),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_reads_back_and_a_flipped_bit_does_not() {
        let mut bytes = Vec::new();
        frame(b"one", &mut bytes);
        frame(b"two", &mut bytes);
        assert_eq!(
            unframe(&bytes),
            (vec![b"one".to_vec(), b"two".to_vec()], 22)
        );
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(unframe(&bytes), (vec![b"one".to_vec()], 11));
    }

    #[test]
    fn a_length_past_the_limit_ends_the_records() {
        let mut bytes = Vec::new();
        frame(b"one", &mut bytes);
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        bytes.extend_from_slice(&[0; 12]);
        assert_eq!(unframe(&bytes).1, 11);
    }
}
