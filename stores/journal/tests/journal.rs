//! The journal against real files: what is acknowledged is replayed, a torn tail is not, and
//! drained segments go.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};

use ferry_journal::{Durability, Journal, Replayed};

fn payloads(replayed: &[Replayed]) -> Vec<Vec<u8>> {
    replayed
        .iter()
        .map(|record| record.payload.clone())
        .collect()
}

fn segment_files(directory: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(directory)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn acknowledged_records_are_replayed_in_order_and_numbering_goes_on() {
    let directory = tempfile::tempdir().unwrap();
    let (journal, replayed) = Journal::open(directory.path(), Durability::PowerLoss).unwrap();
    assert!(replayed.is_empty());
    for (expected, text) in ["a", "b", "c"].into_iter().enumerate() {
        let sequence = journal.append(text.as_bytes().to_vec()).await.unwrap();
        assert_eq!(sequence, expected as u64);
    }
    drop(journal);

    let (journal, replayed) = Journal::open(directory.path(), Durability::PowerLoss).unwrap();
    assert_eq!(
        payloads(&replayed),
        [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
    );
    assert_eq!(
        replayed
            .iter()
            .map(|record| record.sequence)
            .collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert_eq!(journal.append(b"d".to_vec()).await.unwrap(), 3);
    drop(journal);
    let (_, replayed) = Journal::open(directory.path(), Durability::ProcessCrash).unwrap();
    assert_eq!(replayed.len(), 4);
    assert_eq!(replayed[3].sequence, 3);
}

#[tokio::test]
async fn a_record_torn_at_any_byte_is_cut_off_and_the_rest_replays() {
    let written = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(written.path(), Durability::ProcessCrash).unwrap();
    let records = [
        b"{\"request_id\":\"r1\"}".to_vec(),
        b"{\"request_id\":\"r2\"}".to_vec(),
        b"{\"request_id\":\"the last one\"}".to_vec(),
    ];
    for record in &records {
        journal.append(record.clone()).await.unwrap();
    }
    drop(journal);
    let [segment] = segment_files(written.path()).try_into().unwrap();
    let bytes = fs::read(&segment).unwrap();
    let last_starts = bytes.len() - records[2].len() - 8;

    for cut in last_starts..bytes.len() {
        let copy = tempfile::tempdir().unwrap();
        let torn = copy.path().join(segment.file_name().unwrap());
        fs::write(&torn, &bytes[..cut]).unwrap();
        let (journal, replayed) = Journal::open(copy.path(), Durability::ProcessCrash).unwrap();
        assert_eq!(payloads(&replayed), records[..2], "cut at byte {cut}");
        assert_eq!(
            fs::metadata(&torn).unwrap().len(),
            last_starts as u64,
            "the torn tail is cut off"
        );
        // What comes after is whole and replays after the two.
        assert_eq!(journal.append(b"after".to_vec()).await.unwrap(), 2);
        drop(journal);
        let (_, replayed) = Journal::open(copy.path(), Durability::ProcessCrash).unwrap();
        assert_eq!(
            payloads(&replayed),
            [records[0].clone(), records[1].clone(), b"after".to_vec()],
            "cut at byte {cut}"
        );
    }

    // Garbage in place of the last record (a flipped bit) is a tear too.
    let copy = tempfile::tempdir().unwrap();
    let mut flipped = bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x40;
    fs::write(copy.path().join(segment.file_name().unwrap()), flipped).unwrap();
    let (_, replayed) = Journal::open(copy.path(), Durability::ProcessCrash).unwrap();
    assert_eq!(payloads(&replayed), records[..2]);
}

#[tokio::test]
async fn concurrent_appends_share_writes_and_each_gets_its_own_number() {
    let directory = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(directory.path(), Durability::PowerLoss).unwrap();
    let mut tasks = Vec::new();
    for task in 0..8u32 {
        let journal = journal.clone();
        tasks.push(tokio::spawn(async move {
            let mut sequences = Vec::new();
            for call in 0..200u32 {
                let payload = format!("{task}:{call}").into_bytes();
                sequences.push(journal.append(payload).await.unwrap());
            }
            sequences
        }));
    }
    let mut sequences = Vec::new();
    for task in tasks {
        sequences.extend(task.await.unwrap());
    }
    sequences.sort_unstable();
    assert_eq!(sequences, (0..1600).collect::<Vec<u64>>());
    drop(journal);
    let (_, replayed) = Journal::open(directory.path(), Durability::PowerLoss).unwrap();
    assert_eq!(replayed.len(), 1600);
}

#[tokio::test]
async fn drained_segments_are_deleted_and_undrained_ones_replay() {
    let directory = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(directory.path(), Durability::ProcessCrash).unwrap();
    // 1 MiB records: a segment closes once it passes 8 MiB, after its eighth.
    let big = |index: u8| vec![index; 1 << 20];
    for index in 0..20u8 {
        journal.append(big(index)).await.unwrap();
    }
    assert_eq!(segment_files(directory.path()).len(), 3);
    journal.drained(6).unwrap();
    assert_eq!(
        segment_files(directory.path()).len(),
        3,
        "a segment goes only when all of it is drained"
    );
    journal.drained(7).unwrap();
    assert_eq!(segment_files(directory.path()).len(), 2);
    drop(journal);

    let (journal, replayed) = Journal::open(directory.path(), Durability::ProcessCrash).unwrap();
    assert_eq!(
        replayed
            .iter()
            .map(|record| record.sequence)
            .collect::<Vec<_>>(),
        (8..20).collect::<Vec<u64>>()
    );
    assert_eq!(replayed[0].payload, big(8));
    journal.drained(19).unwrap();
    assert!(segment_files(directory.path()).is_empty());
    assert_eq!(journal.append(b"next".to_vec()).await.unwrap(), 20);
}

#[tokio::test]
async fn a_record_past_the_limit_is_refused_before_it_is_written() {
    let directory = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(directory.path(), Durability::ProcessCrash).unwrap();
    let error = journal
        .append(vec![0; ferry_journal::MAX_RECORD + 1])
        .await
        .unwrap_err();
    assert!(error.to_string().contains("at most"), "{error}");
    assert_eq!(journal.append(b"fine".to_vec()).await.unwrap(), 0);
}

#[tokio::test]
async fn a_dead_process_journal_is_an_orphan_and_a_live_one_is_not() {
    let root = tempfile::tempdir().unwrap();
    let alive = ferry_journal::claim(root.path(), "alive").unwrap();
    let dying = ferry_journal::claim(root.path(), "dying").unwrap();
    let (journal, _) = Journal::open(dying.directory(), Durability::ProcessCrash).unwrap();
    journal.append(b"answered".to_vec()).await.unwrap();
    drop(journal);
    assert!(
        ferry_journal::orphans(root.path(), &alive)
            .unwrap()
            .is_empty(),
        "a journal whose process holds it is no orphan"
    );
    // Its process dies: its lock goes with it.
    drop(dying);
    let [orphan] = ferry_journal::orphans(root.path(), &alive)
        .unwrap()
        .try_into()
        .unwrap();
    assert!(
        ferry_journal::orphans(root.path(), &alive)
            .unwrap()
            .is_empty(),
        "an orphan is adopted once"
    );
    assert_eq!(orphan.records().unwrap(), [b"answered".to_vec()]);
    orphan.remove().unwrap();
    assert_eq!(segment_files(root.path()), [root.path().join("alive")]);
    alive.remove().unwrap();
    assert!(segment_files(root.path()).is_empty());
}
