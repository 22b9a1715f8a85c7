//! A blocking `Read + Seek` view of a sealed blob's plaintext, so the DICOM parser
//! (synchronous) can read a large stored instance without loading it whole. Each block read
//! decrypts only the segments holding it. Used only inside `spawn_blocking`.

use std::io::{self, Read, Seek, SeekFrom};

use bytes::Bytes;
use hds_blob::SealedRanges;
use tokio::runtime::Handle;

/// How much each read fetches ahead.
const READ_AHEAD: u64 = 1024 * 1024;

/// Reads a sealed blob through ranged reads with a one-block cache.
pub struct BlobSyncReader {
    ranges: SealedRanges,
    length: u64,
    position: u64,
    block_start: u64,
    block: Bytes,
    runtime: Handle,
}

impl BlobSyncReader {
    /// A reader over the plaintext of the sealed blob that `ranges` opened.
    pub fn new(ranges: SealedRanges, runtime: Handle) -> BlobSyncReader {
        let length = ranges.plaintext_len();
        BlobSyncReader {
            ranges,
            length,
            position: 0,
            block_start: 0,
            block: Bytes::new(),
            runtime,
        }
    }
}

impl Read for BlobSyncReader {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        if self.position >= self.length || buffer.is_empty() {
            return Ok(0);
        }
        let block_end = self.block_start + self.block.len() as u64;
        if self.position < self.block_start || self.position >= block_end {
            let end = (self.position + READ_AHEAD).min(self.length);
            let range = self.position..end;
            self.block = self
                .runtime
                .block_on(self.ranges.read_range(range))
                .map_err(io::Error::other)?;
            self.block_start = self.position;
            if self.block.is_empty() {
                return Ok(0);
            }
        }
        let offset = (self.position - self.block_start) as usize;
        let available = &self.block[offset..];
        let count = available.len().min(buffer.len());
        buffer[..count].copy_from_slice(&available[..count]);
        self.position += count as u64;
        Ok(count)
    }
}

impl Seek for BlobSyncReader {
    fn seek(&mut self, target: SeekFrom) -> io::Result<u64> {
        let position = match target {
            SeekFrom::Start(offset) => Some(offset),
            SeekFrom::End(delta) => self.length.checked_add_signed(delta),
            SeekFrom::Current(delta) => self.position.checked_add_signed(delta),
        };
        self.position = position
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before start"))?;
        Ok(self.position)
    }
}
