//! Packs: the blobs of a local store that are written whole (up to [`PACKED_BLOB_LIMIT`]:
//! every sealed blob of up to 1 MiB of ciphertext), appended to shared segment files rather
//! than each created as a file of its own.
//!
//! Why: a file per blob costs every STOW an inode and a directory entry to create, the
//! directory's sync, and a data sync that also writes the new inode. A record in a pack costs
//! one write and one data sync, and the syncs of concurrent stores into one segment overlap.
//! At 33 KiB per instance this is a fifth of hds's CPU per STOW (docs/benchmarks.md, "Small
//! blobs in packs"); at 513 KiB, with space prepared ahead, a seventh more STOWs a second
//! ("Every blob written whole in a pack").
//!
//! Layout (also in docs/durability.md):
//! - `packs/NNNNNNNNNN.pack`: segments numbered from 1. A process appends only to segments it
//!   created (a new one when it first packs a blob, and when the current one is full), so no
//!   two writers and no restart ever share the end of a segment.
//! - A record starts at a multiple of [`RECORD_ALIGN`]: a [`HEADER_LEN`]-byte header, the
//!   blob's bytes, and nothing up to the next boundary (a record never shares a block with
//!   another, so deleting it punches a hole over whole blocks and gives them back).
//! - The header: magic `HDSPACK1`, the blob's identity (16 bytes), its length (u32), when it
//!   was written (Unix seconds, u64), and a CRC-32 of those 36 bytes (all big-endian).
//!
//! A packed blob's name says where its record is ([`RecordAt`]), so a read is a `pread` with
//! no lookup. Every read checks the record's header against the name: a deleted record (a
//! hole reads as zeros) or another blob's is not found.
//!
//! Durability is a file's: a record is on stable storage once the segment's data is synced
//! after its write, and a new segment's name once the pack directory is synced, which happens
//! before the first record in it is written.
//!
//! Space prepared ahead (when writes are synced): a data sync after a write that grows a file
//! must also allocate its blocks and write the file's size and block map. So a segment's next
//! chunk (1 MiB at first, then as much as the segment holds, up to [`PREPARE_CHUNK`]) is
//! allocated (`fallocate`) and synced ahead of the records, by a thread of its own, once less
//! than half a chunk of prepared space is left. Allocating writes no data: the blocks are
//! marked unwritten, and read as zeros until a record is written there. A record's data sync
//! then only marks its blocks written, beside writing them. A record never goes where space is
//! being allocated: a reservation past the prepared space waits while a chunk is prepared. If
//! preparing fails (a file system without `fallocate`, a full disk), the segment's records
//! are appended as before. A segment ends with up to one chunk of allocated space after its
//! last record, which reads as zeros: no record.

use std::collections::HashMap;
use std::fs::File;
use std::io::IoSlice;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::{FallocateFlags, SeekFrom};

use crate::local::sync_directory;

/// The directory of a local store's packs.
pub(crate) const DIRECTORY: &str = "packs";

/// Records start at multiples of this (the file system's block size).
pub(crate) const RECORD_ALIGN: u64 = 4096;

/// The length of a record's header.
pub(crate) const HEADER_LEN: usize = 64;

/// The largest blob kept in a pack; a larger one written whole is a file of its own. Above
/// what a sealed blob written whole reaches (`sealed.rs` writes one of more than 1 MiB of
/// ciphertext in pieces, as a file), so every sealed blob written whole is a record: a file
/// costs a directory entry and the directory's sync besides its data's (docs/benchmarks.md,
/// "Every blob written whole in a pack").
pub const PACKED_BLOB_LIMIT: usize = 2 * 1024 * 1024;

/// A segment takes no record that would end past this; the next one goes into a new segment.
pub(crate) const SEGMENT_LIMIT: u64 = 1 << 30;

/// The most of a segment prepared at a time (see the module's note). A chunk is as large as
/// what the segment holds already, from [`FIRST_PREPARE_CHUNK`] up to this, so a process that
/// stores a few blobs holds little unused space.
const PREPARE_CHUNK: u64 = 16 << 20;

/// The first chunk prepared in a segment.
const FIRST_PREPARE_CHUNK: u64 = 1 << 20;

/// The largest record offset a name may carry (far beyond [`SEGMENT_LIMIT`], so a store
/// opened with a larger limit later still reads every name).
const OFFSET_LIMIT: u64 = 1 << 40;

const MAGIC: &[u8; 8] = b"HDSPACK1";

/// Open segments kept for reads and deletes; past this, a segment is opened per read. Well
/// under a process's usual limit of 1,024 open files, which the server's sockets and database
/// share (every start of hds begins a segment, so a data dir can hold many).
const OPEN_SEGMENTS_KEPT: usize = 64;

/// Where a packed blob's record is: its segment, the record's offset in it, and the blob's
/// length. Written in a name as `SEGMENT.OFFSET.LENGTH`, decimal, without leading zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct RecordAt {
    pub(crate) segment: u32,
    pub(crate) offset: u64,
    pub(crate) length: u32,
}

impl RecordAt {
    /// Parses the record part of a name; `None` for anything but the one canonical spelling
    /// of a record this store could have written.
    pub(crate) fn parse(text: &str) -> Option<RecordAt> {
        let mut parts = text.split('.');
        let segment = u32::try_from(canonical_number(parts.next()?)?).ok()?;
        let offset = canonical_number(parts.next()?)?;
        let length = u32::try_from(canonical_number(parts.next()?)?).ok()?;
        if parts.next().is_some() {
            return None;
        }
        let record = RecordAt {
            segment,
            offset,
            length,
        };
        let valid = segment >= 1
            && offset % RECORD_ALIGN == 0
            && offset < OFFSET_LIMIT
            && length >= 1
            && length as usize <= PACKED_BLOB_LIMIT;
        valid.then_some(record)
    }

    /// The bytes the record takes in its segment, up to the next record's start.
    fn span(&self) -> u64 {
        (HEADER_LEN as u64 + u64::from(self.length)).next_multiple_of(RECORD_ALIGN)
    }

    /// Where the blob's bytes start.
    pub(crate) fn data_offset(&self) -> u64 {
        self.offset + HEADER_LEN as u64
    }
}

impl std::fmt::Display for RecordAt {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "{}.{}.{}",
            self.segment, self.offset, self.length
        )
    }
}

/// Decimal digits without a sign or a leading zero ("0" itself aside).
fn canonical_number(text: &str) -> Option<u64> {
    let digits_only =
        !text.is_empty() && text.len() <= 19 && text.bytes().all(|b| b.is_ascii_digit());
    if !digits_only || (text.len() > 1 && text.starts_with('0')) {
        return None;
    }
    text.parse().ok()
}

/// A record's header, as written.
fn header(identity: &[u8; 16], length: u32, written: u64) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..8].copy_from_slice(MAGIC);
    header[8..24].copy_from_slice(identity);
    header[24..28].copy_from_slice(&length.to_be_bytes());
    header[28..36].copy_from_slice(&written.to_be_bytes());
    let checksum = crc32fast::hash(&header[..36]);
    header[36..40].copy_from_slice(&checksum.to_be_bytes());
    header
}

/// What a valid header says.
#[derive(Debug, PartialEq, Eq)]
struct Header {
    identity: [u8; 16],
    length: u32,
    written: u64,
}

/// The header in `bytes`, if they are one: magic, checksum and a length a record can have.
fn parse_header(bytes: &[u8; HEADER_LEN]) -> Option<Header> {
    if &bytes[..8] != MAGIC {
        return None;
    }
    let checksum = u32::from_be_bytes(bytes[36..40].try_into().ok()?);
    if crc32fast::hash(&bytes[..36]) != checksum {
        return None;
    }
    let length = u32::from_be_bytes(bytes[24..28].try_into().ok()?);
    if length == 0 || length as usize > PACKED_BLOB_LIMIT {
        return None;
    }
    Some(Header {
        identity: bytes[8..24].try_into().ok()?,
        length,
        written: u64::from_be_bytes(bytes[28..36].try_into().ok()?),
    })
}

/// The segment this process appends to.
struct Appending {
    segment: u32,
    file: Arc<File>,
    next_offset: u64,
    /// Everything before this offset is allocated (records, or space that reads as zeros),
    /// and the allocation is synced.
    prepared_end: u64,
    /// A chunk after `prepared_end` is being prepared.
    preparing: bool,
    /// Preparing failed: records past `prepared_end` are appended.
    prepare_failed: bool,
}

/// The segment being appended to, and the signal that a chunk of it was prepared.
#[derive(Default)]
struct AppendState {
    appending: Mutex<Option<Appending>>,
    prepared: Condvar,
}

impl AppendState {
    /// Releases `appending` until a chunk's preparation ends, then holds it again.
    fn wait_for_chunk<'a>(
        &self,
        appending: MutexGuard<'a, Option<Appending>>,
    ) -> MutexGuard<'a, Option<Appending>> {
        self.prepared
            .wait(appending)
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The packs of one local store. Every method blocks: call them on the blocking pool.
pub(crate) struct Packs {
    directory: PathBuf,
    sync_writes: bool,
    segment_limit: u64,
    /// How much is prepared at a time; 0: nothing is.
    prepare_chunk: u64,
    /// The segment is created on the first packed write, so a store opened only to read (a
    /// backup) never starts one.
    append: Arc<AppendState>,
    /// Segments opened for reads and deletes.
    open: Mutex<HashMap<u32, Arc<File>>>,
}

impl Packs {
    pub(crate) fn new(root: &Path, sync_writes: bool) -> Packs {
        Packs::with_segment_limit(root, sync_writes, SEGMENT_LIMIT)
    }

    pub(crate) fn with_segment_limit(root: &Path, sync_writes: bool, segment_limit: u64) -> Packs {
        Packs {
            directory: root.join(DIRECTORY),
            sync_writes,
            segment_limit,
            // Only a synced write gains from prepared space.
            prepare_chunk: if sync_writes { PREPARE_CHUNK } else { 0 },
            append: Arc::default(),
            open: Mutex::new(HashMap::new()),
        }
    }

    /// The same packs with no space prepared ahead (tests that count a segment's blocks).
    #[cfg(test)]
    fn unprepared(mut self) -> Packs {
        self.prepare_chunk = 0;
        self
    }

    /// Waits until no chunk is being prepared.
    #[cfg(test)]
    fn wait_prepared(&self) {
        let mut appending = lock(&self.append.appending);
        while appending.as_ref().is_some_and(|current| current.preparing) {
            appending = self.append.wait_for_chunk(appending);
        }
    }

    pub(crate) fn path_of(&self, segment: u32) -> PathBuf {
        self.directory.join(format!("{segment:010}.pack"))
    }

    /// Writes a record of `contents` for the blob `identity` and returns where it is, with the
    /// segment to sync. A failed write leaves at most an unreadable partial record.
    pub(crate) fn append(
        &self,
        identity: &[u8; 16],
        contents: &[u8],
    ) -> std::io::Result<(RecordAt, Arc<File>)> {
        let length = u32::try_from(contents.len())
            .ok()
            .filter(|&length| length >= 1 && length as usize <= PACKED_BLOB_LIMIT)
            .ok_or_else(|| std::io::Error::other("a packed blob's length is out of range"))?;
        let (record, file) = self.reserve(length)?;
        let header = header(identity, length, unix_seconds(SystemTime::now()));
        // The rest of the record's last block is not written: past the end of the file, or in
        // allocated space, the kernel fills it with zeros without reading the disk.
        write_all_vectored_at(&file, &[&header, contents], record.offset)?;
        Ok((record, file))
    }

    /// Takes the next record's place in the segment being appended to, starting a segment
    /// when there is none or the record would not fit; starts preparing the segment's next
    /// chunk when little prepared space is left, and waits for a chunk being prepared rather
    /// than take a place in it.
    fn reserve(&self, length: u32) -> std::io::Result<(RecordAt, Arc<File>)> {
        let span = (HEADER_LEN as u64 + u64::from(length)).next_multiple_of(RECORD_ALIGN);
        let mut appending = lock(&self.append.appending);
        loop {
            let full = appending
                .as_ref()
                .is_none_or(|current| current.next_offset + span > self.segment_limit);
            if full {
                let after = appending.as_ref().map_or(0, |current| current.segment);
                *appending = Some(self.start_segment(after)?);
            }
            let current = appending
                .as_mut()
                .ok_or_else(|| std::io::Error::other("no segment to append to"))?;
            let end = current.next_offset + span;
            if current.preparing && end > current.prepared_end {
                appending = self.append.wait_for_chunk(appending);
                continue;
            }
            let record = RecordAt {
                segment: current.segment,
                offset: current.next_offset,
                length,
            };
            current.next_offset = end;
            self.prepare_ahead(current);
            return Ok((record, Arc::clone(&current.file)));
        }
    }

    /// Starts preparing the chunk after `current`'s prepared space (and after its last
    /// record) on a thread of its own, when less than half a chunk is left.
    fn prepare_ahead(&self, current: &mut Appending) {
        if self.prepare_chunk == 0 || current.preparing || current.prepare_failed {
            return;
        }
        let chunk = current.next_offset.clamp(
            FIRST_PREPARE_CHUNK,
            self.prepare_chunk.max(FIRST_PREPARE_CHUNK),
        );
        if current.prepared_end >= current.next_offset + chunk / 2 {
            return;
        }
        let from = current.prepared_end.max(current.next_offset);
        let to = (from + chunk).min(self.segment_limit);
        if to <= from {
            return;
        }
        current.preparing = true;
        let state = Arc::clone(&self.append);
        let segment = current.segment;
        let file = Arc::clone(&current.file);
        let started = std::thread::Builder::new()
            .name("hds-pack-prepare".into())
            .spawn(move || {
                let prepared = prepare_space(&file, from, to);
                let mut appending = lock(&state.appending);
                if let Some(current) = appending
                    .as_mut()
                    .filter(|current| current.segment == segment)
                {
                    current.preparing = false;
                    match prepared {
                        Ok(()) => current.prepared_end = to,
                        Err(error) => {
                            tracing::warn!(%error, segment, "preparing pack space failed; the segment's records are appended");
                            current.prepare_failed = true;
                        }
                    }
                }
                state.prepared.notify_all();
            });
        if let Err(error) = started {
            tracing::warn!(%error, "no thread to prepare pack space; the segment's records are appended");
            current.preparing = false;
            current.prepare_failed = true;
        }
    }

    /// Creates a segment numbered after every existing one (and after `after`), and syncs the
    /// pack directory so its name survives a power cut before any record in it is written.
    fn start_segment(&self, after: u32) -> std::io::Result<Appending> {
        let created = !self.directory.is_dir();
        std::fs::create_dir_all(&self.directory)?;
        if created
            && self.sync_writes
            && let Some(root) = self.directory.parent()
        {
            sync_directory(root)?;
        }
        let highest = self.segments()?.into_iter().max().unwrap_or(0);
        let mut segment = highest.max(after);
        loop {
            segment = segment
                .checked_add(1)
                .ok_or_else(|| std::io::Error::other("no segment number left"))?;
            let opened = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(self.path_of(segment));
            match opened {
                Ok(file) => {
                    if self.sync_writes {
                        sync_directory(&self.directory)?;
                    }
                    let file = Arc::new(file);
                    self.keep_open(segment, &file);
                    return Ok(Appending {
                        segment,
                        file,
                        next_offset: 0,
                        prepared_end: 0,
                        preparing: false,
                        prepare_failed: false,
                    });
                }
                // Another process took this number meanwhile: the next one.
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(error) => return Err(error),
            }
        }
    }

    /// The numbers of the segments in the pack directory.
    pub(crate) fn segments(&self) -> std::io::Result<Vec<u32>> {
        let entries = match std::fs::read_dir(&self.directory) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(error),
        };
        let mut segments = Vec::new();
        for entry in entries {
            let name = entry?.file_name();
            let number = name
                .to_str()
                .and_then(|name| name.strip_suffix(".pack"))
                .filter(|digits| digits.len() == 10 && digits.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|digits| digits.parse::<u32>().ok());
            if let Some(number) = number {
                segments.push(number);
            }
        }
        segments.sort_unstable();
        Ok(segments)
    }

    fn keep_open(&self, segment: u32, file: &Arc<File>) {
        let mut open = lock(&self.open);
        if open.len() < OPEN_SEGMENTS_KEPT {
            open.insert(segment, Arc::clone(file));
        }
    }

    /// The segment's open file, or `None` when there is no such segment.
    fn segment(&self, segment: u32) -> std::io::Result<Option<Arc<File>>> {
        if let Some(file) = lock(&self.open).get(&segment) {
            return Ok(Some(Arc::clone(file)));
        }
        let path = self.path_of(segment);
        let opened = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
        {
            // A store that may only read (a backup of another user's data dir) still reads.
            Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => File::open(&path),
            other => other,
        };
        match opened {
            Ok(file) => {
                let file = Arc::new(file);
                self.keep_open(segment, &file);
                Ok(Some(file))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// The segment holding the blob's record, if the record is there and is the blob's.
    pub(crate) fn find(
        &self,
        identity: &[u8; 16],
        record: RecordAt,
    ) -> std::io::Result<Option<Arc<File>>> {
        let Some(file) = self.segment(record.segment)? else {
            return Ok(None);
        };
        let mut bytes = [0u8; HEADER_LEN];
        match file.read_exact_at(&mut bytes, record.offset) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(error) => return Err(error),
        }
        let found = parse_header(&bytes)
            .is_some_and(|found| found.identity == *identity && found.length == record.length);
        Ok(found.then_some(file))
    }

    /// The bytes in `range` of the blob, or `None` when its record is not there.
    pub(crate) fn read(
        &self,
        identity: &[u8; 16],
        record: RecordAt,
        range: Range<u64>,
    ) -> std::io::Result<Option<Vec<u8>>> {
        if range.start > range.end || range.end > u64::from(record.length) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a range outside the blob",
            ));
        }
        let Some(file) = self.find(identity, record)? else {
            return Ok(None);
        };
        read_at(
            &file,
            record.data_offset() + range.start,
            range.end - range.start,
        )
        .map(Some)
    }

    /// Deletes the blob's record: a hole is punched over it, which frees its blocks. A record
    /// that is not there (deleted already) is no error.
    pub(crate) fn delete(&self, identity: &[u8; 16], record: RecordAt) -> std::io::Result<()> {
        let Some(file) = self.find(identity, record)? else {
            return Ok(());
        };
        let punched = rustix::fs::fallocate(
            &*file,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            record.offset,
            record.span(),
        );
        match punched {
            Ok(()) => Ok(()),
            // A file system without holes: the header is overwritten, so the record no longer
            // reads; its ciphertext stays, and its blob key went with its index row.
            Err(rustix::io::Errno::OPNOTSUPP) => {
                file.write_all_at(&[0u8; HEADER_LEN], record.offset)
            }
            Err(error) => Err(error.into()),
        }
    }

    /// The records of `segment` written before `cutoff`: the blob's identity and where its
    /// record is. Holes (deleted records, places never written) are skipped without being
    /// read; a block that does not start a record (a write a crash cut short) is skipped too.
    pub(crate) fn settled_records(
        &self,
        segment: u32,
        cutoff: SystemTime,
    ) -> std::io::Result<Vec<([u8; 16], RecordAt)>> {
        let Some(file) = self.segment(segment)? else {
            return Ok(Vec::new());
        };
        let cutoff = unix_seconds(cutoff);
        let size = file.metadata()?.len();
        let mut records = Vec::new();
        let mut position = 0u64;
        while position < size {
            position = match rustix::fs::seek(&*file, SeekFrom::Data(position)) {
                Ok(data) => data - data % RECORD_ALIGN,
                // Nothing but holes from here on.
                Err(rustix::io::Errno::NXIO) => break,
                Err(error) => return Err(error.into()),
            };
            let mut bytes = [0u8; HEADER_LEN];
            let header = match file.read_exact_at(&mut bytes, position) {
                Ok(()) => parse_header(&bytes),
                Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => None,
                Err(error) => return Err(error),
            };
            match header {
                Some(header) => {
                    let record = RecordAt {
                        segment,
                        offset: position,
                        length: header.length,
                    };
                    if header.written < cutoff {
                        records.push((header.identity, record));
                    }
                    position += record.span();
                }
                None => position += RECORD_ALIGN,
            }
        }
        Ok(records)
    }
}

/// Allocates `from..to` of the segment `file` and syncs the allocation, so those blocks are in
/// the file's synced size and block map before a record is written there. No data is written:
/// the space reads as zeros until a record goes there.
fn prepare_space(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    rustix::fs::fallocate(file, FallocateFlags::empty(), from, to - from)?;
    file.sync_data()
}

/// Exactly `length` bytes at `offset`, read into a buffer that is not zeroed first; a file
/// that ends before is an error.
pub(crate) fn read_at(file: &File, offset: u64, length: u64) -> std::io::Result<Vec<u8>> {
    let capacity = usize::try_from(length).map_err(std::io::Error::other)?;
    let mut bytes = Vec::with_capacity(capacity);
    while bytes.len() < capacity {
        let position = offset + bytes.len() as u64;
        let read = rustix::io::pread(file, rustix::buffer::spare_capacity(&mut bytes), position)?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    // The allocation may have been larger than asked, and the last read with it.
    bytes.truncate(capacity);
    Ok(bytes)
}

/// Writes every piece, in order, from `offset` on.
fn write_all_vectored_at(file: &File, pieces: &[&[u8]], offset: u64) -> std::io::Result<()> {
    let total: usize = pieces.iter().map(|piece| piece.len()).sum();
    let mut done = 0usize;
    while done < total {
        // The pieces from `done` on.
        let mut skip = done;
        let mut slices = Vec::with_capacity(pieces.len());
        for piece in pieces {
            if skip >= piece.len() {
                skip -= piece.len();
                continue;
            }
            slices.push(IoSlice::new(&piece[skip..]));
            skip = 0;
        }
        let written = rustix::io::pwritev(file, &slices, offset + done as u64)?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        done += written;
    }
    Ok(())
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// A poisoned lock still guards consistent data here (every update is one assignment).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(byte: u8) -> [u8; 16] {
        [byte; 16]
    }

    #[test]
    fn record_places_have_one_spelling() {
        let record = RecordAt {
            segment: 3,
            offset: 8192,
            length: 33_900,
        };
        assert_eq!(record.to_string(), "3.8192.33900");
        assert_eq!(RecordAt::parse("3.8192.33900"), Some(record));
        let longest = format!("3.8192.{PACKED_BLOB_LIMIT}");
        assert!(RecordAt::parse(&longest).is_some());
        for hostile in [
            "03.8192.33900",
            "3.08192.33900",
            "3.8192.033900",
            "0.8192.33900",
            "3.8193.33900",
            "3.8192.0",
            "3.8192",
            "3.8192.33900.1",
            "3.8192.+339",
            "3.8192.-1",
            "4294967296.0.1",
            "1.1099511627776.1",
            "1.99999999999999999999.1",
            "",
            "..",
            "1.0.1 ",
        ] {
            assert_eq!(RecordAt::parse(hostile), None, "{hostile:?}");
        }
        let too_long = format!("3.8192.{}", PACKED_BLOB_LIMIT + 1);
        assert_eq!(RecordAt::parse(&too_long), None);
    }

    #[test]
    fn records_round_trip_and_deleted_ones_are_gone() {
        let directory = tempfile::tempdir().expect("temp dir");
        // Its blocks are counted below: no space prepared after the records.
        let packs = Packs::new(directory.path(), true).unprepared();
        let small = vec![7u8; 100];
        let larger: Vec<u8> = (0..70_000u32).map(|i| (i % 253) as u8).collect();
        let (first, file) = packs.append(&identity(1), &small).expect("append");
        file.sync_data().expect("sync");
        let (second, _) = packs.append(&identity(2), &larger).expect("append");
        assert_eq!((first.segment, first.offset), (1, 0));
        assert_eq!((second.segment, second.offset), (1, RECORD_ALIGN));
        assert_eq!(
            packs.read(&identity(1), first, 0..100).expect("read"),
            Some(small.clone())
        );
        assert_eq!(
            packs
                .read(&identity(2), second, 65_000..70_000)
                .expect("read"),
            Some(larger[65_000..].to_vec())
        );
        // Another blob's identity, or a length that is not the record's, finds nothing.
        assert_eq!(packs.read(&identity(9), first, 0..1).expect("read"), None);
        let wrong_length = RecordAt {
            length: 99,
            ..first
        };
        assert_eq!(
            packs.read(&identity(1), wrong_length, 0..1).expect("read"),
            None
        );
        assert!(
            packs.read(&identity(1), first, 0..101).is_err(),
            "past the blob's end"
        );
        let missing_segment = RecordAt {
            segment: 7,
            ..first
        };
        assert_eq!(
            packs
                .read(&identity(1), missing_segment, 0..1)
                .expect("read"),
            None
        );

        packs.delete(&identity(2), second).expect("delete");
        assert_eq!(packs.read(&identity(2), second, 0..1).expect("read"), None);
        packs.delete(&identity(2), second).expect("deleting again");
        // The deleted record's blocks are a hole now: the file holds only the first record.
        let segment = std::fs::metadata(packs.path_of(1)).expect("segment");
        use std::os::unix::fs::MetadataExt;
        assert!(
            segment.blocks() * 512 <= 2 * RECORD_ALIGN,
            "{} blocks",
            segment.blocks()
        );
        assert_eq!(
            packs.read(&identity(1), first, 0..100).expect("read"),
            Some(small)
        );
    }

    #[test]
    fn each_store_appends_to_a_segment_of_its_own_and_full_segments_roll_over() {
        let directory = tempfile::tempdir().expect("temp dir");
        let packs = Packs::with_segment_limit(directory.path(), true, 3 * RECORD_ALIGN);
        let mut places = Vec::new();
        for byte in 0..4u8 {
            let (record, _) = packs
                .append(&identity(byte), &[byte; 5000])
                .expect("append");
            places.push((record.segment, record.offset));
        }
        // Two blocks a record: one record fits a segment of three blocks.
        assert_eq!(places, vec![(1, 0), (2, 0), (3, 0), (4, 0)]);
        // A second store on the same directory (a restart) never appends to those.
        let restarted = Packs::new(directory.path(), true);
        let (record, _) = restarted.append(&identity(9), b"after").expect("append");
        assert_eq!((record.segment, record.offset), (5, 0));
        assert_eq!(restarted.segments().expect("segments"), vec![1, 2, 3, 4, 5]);
        assert_eq!(
            restarted
                .read(
                    &identity(0),
                    RecordAt {
                        segment: 1,
                        offset: 0,
                        length: 5000
                    },
                    0..5000
                )
                .expect("read"),
            Some(vec![0u8; 5000])
        );
    }

    #[test]
    fn records_fill_space_prepared_ahead_while_more_is_prepared() {
        let directory = tempfile::tempdir().expect("temp dir");
        let packs = Arc::new(Packs::new(directory.path(), true));
        // Eight writers at once, about 40 MiB in all: chunks of 1, 2, 4, 8 and 16 MiB, so
        // records keep arriving while the next chunk is allocated.
        let writers: Vec<_> = (0..8u8)
            .map(|writer| {
                let packs = Arc::clone(&packs);
                std::thread::spawn(move || {
                    (0..250u32)
                        .map(|number| {
                            let mut identity = [writer; 16];
                            identity[..4].copy_from_slice(&number.to_be_bytes());
                            let length = 100 + (number as usize * 7919) % 40_000;
                            let contents = vec![writer.wrapping_add(number as u8) | 1; length];
                            let (record, _) = packs.append(&identity, &contents).expect("append");
                            (identity, record, contents)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let written: Vec<_> = writers
            .into_iter()
            .flat_map(|writer| writer.join().expect("writer"))
            .collect();
        for (identity, record, contents) in &written {
            let read = packs
                .read(identity, *record, 0..u64::from(record.length))
                .expect("read");
            assert_eq!(read.as_ref(), Some(contents), "{record:?}");
        }
        // Space is prepared past the last record, and it holds no record.
        packs.wait_prepared();
        let last_end = written
            .iter()
            .map(|(_, record, _)| record.offset + record.span())
            .max()
            .expect("records");
        let segment = std::fs::metadata(packs.path_of(1)).expect("segment");
        let size = segment.len();
        assert!(size > last_end, "prepared to {size}, records to {last_end}");
        // Allocated, not a sparse file's hole: every block up to the end is the segment's.
        let allocated = std::os::unix::fs::MetadataExt::blocks(&segment) * 512;
        assert!(allocated >= size, "{allocated} bytes allocated of {size}");
        let later = SystemTime::now() + std::time::Duration::from_secs(2);
        let mut listed = packs.settled_records(1, later).expect("list");
        let mut expected: Vec<_> = written
            .iter()
            .map(|(identity, record, _)| (*identity, *record))
            .collect();
        listed.sort_by_key(|(_, record)| record.offset);
        expected.sort_by_key(|(_, record)| record.offset);
        assert_eq!(listed, expected);
    }

    #[test]
    fn settled_records_skip_holes_young_records_and_cut_writes() {
        let directory = tempfile::tempdir().expect("temp dir");
        let packs = Packs::new(directory.path(), true);
        let (kept, _) = packs.append(&identity(1), &[1u8; 5000]).expect("append");
        let (deleted, _) = packs.append(&identity(2), &[2u8; 100]).expect("append");
        let (third, file) = packs.append(&identity(3), &[3u8; 9000]).expect("append");
        packs.delete(&identity(2), deleted).expect("delete");
        // A write a crash cut short: blocks of ciphertext with no header before them.
        file.write_all_at(&[0xa5u8; 5000], third.offset + 3 * RECORD_ALIGN)
            .expect("leftover");
        let (last, _) = packs.append(&identity(4), &[4u8; 10]).expect("append");

        let later = SystemTime::now() + std::time::Duration::from_secs(2);
        let settled = packs.settled_records(1, later).expect("list");
        assert_eq!(
            settled,
            vec![
                (identity(1), kept),
                (identity(3), third),
                (identity(4), last)
            ]
        );
        let earlier = SystemTime::now() - std::time::Duration::from_secs(3600);
        assert!(packs.settled_records(1, earlier).expect("list").is_empty());
        assert!(packs.settled_records(42, later).expect("list").is_empty());
    }

    #[test]
    fn damaged_headers_are_not_records() {
        let good = header(&identity(5), 1234, 99);
        assert_eq!(
            parse_header(&good),
            Some(Header {
                identity: identity(5),
                length: 1234,
                written: 99
            })
        );
        for position in [0, 8, 24, 28, 36] {
            let mut damaged = good;
            damaged[position] ^= 1;
            assert_eq!(parse_header(&damaged), None, "byte {position}");
        }
        assert_eq!(parse_header(&header(&identity(5), 0, 99)), None);
        let too_long = u32::try_from(PACKED_BLOB_LIMIT + 1).expect("fits");
        assert_eq!(parse_header(&header(&identity(5), too_long, 99)), None);
        assert_eq!(parse_header(&[0u8; HEADER_LEN]), None);
    }
}
