//! A `Read + Seek` view of a part kept in memory as the chunks it arrived in, so the parser
//! reads it where it lies instead of from one concatenated copy (the parser reads headers only,
//! so copying the pixel data to parse it was the largest cost of parsing a typical instance).

use std::io::{self, Read, Seek, SeekFrom};

use bytes::Bytes;

/// Reads a sequence of chunks as one contiguous byte string.
pub struct ChunkReader {
    chunks: Vec<Bytes>,
    /// Offset of each chunk's first byte; `starts[i] + chunks[i].len() == starts[i + 1]`.
    starts: Vec<u64>,
    length: u64,
    position: u64,
}

impl ChunkReader {
    /// A reader positioned at the start of the concatenation of `chunks`.
    pub fn new(chunks: Vec<Bytes>) -> ChunkReader {
        let mut starts = Vec::with_capacity(chunks.len());
        let mut length = 0u64;
        for chunk in &chunks {
            starts.push(length);
            length += chunk.len() as u64;
        }
        ChunkReader {
            chunks,
            starts,
            length,
            position: 0,
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        if buffer.is_empty() || self.position >= self.length {
            return Ok(0);
        }
        // The last chunk starting at or before the position (empty chunks are skipped below).
        let index = self
            .starts
            .partition_point(|&start| start <= self.position)
            .saturating_sub(1);
        let mut copied = 0;
        let mut chunk_index = index;
        while copied < buffer.len() && chunk_index < self.chunks.len() {
            let chunk = &self.chunks[chunk_index];
            let offset = (self.position - self.starts[chunk_index]) as usize;
            if offset < chunk.len() {
                let count = (chunk.len() - offset).min(buffer.len() - copied);
                buffer[copied..copied + count].copy_from_slice(&chunk[offset..offset + count]);
                copied += count;
                self.position += count as u64;
            }
            chunk_index += 1;
        }
        Ok(copied)
    }
}

impl Seek for ChunkReader {
    fn seek(&mut self, target: SeekFrom) -> io::Result<u64> {
        let position = match target {
            SeekFrom::Start(offset) => Some(offset),
            SeekFrom::End(delta) => self.length.checked_add_signed(delta),
            SeekFrom::Current(delta) => self.position.checked_add_signed(delta),
        };
        let position = position
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        self.position = position;
        Ok(position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(pieces: &[&[u8]]) -> ChunkReader {
        ChunkReader::new(
            pieces
                .iter()
                .map(|piece| Bytes::copy_from_slice(piece))
                .collect(),
        )
    }

    #[test]
    fn reads_across_chunks_and_empty_ones() {
        let mut chunks = reader(&[b"abc", b"", b"defg", b"h"]);
        let mut all = Vec::new();
        chunks.read_to_end(&mut all).expect("read");
        assert_eq!(all, b"abcdefgh");
        let mut small = [0u8; 3];
        chunks.seek(SeekFrom::Start(2)).expect("seek");
        chunks.read_exact(&mut small).expect("read");
        assert_eq!(&small, b"cde");
        chunks.seek(SeekFrom::Current(-1)).expect("seek back");
        chunks.read_exact(&mut small).expect("read");
        assert_eq!(&small, b"efg");
        assert_eq!(chunks.seek(SeekFrom::End(-1)).expect("seek end"), 7);
        assert_eq!(chunks.read(&mut small).expect("read"), 1);
        assert_eq!(small[0], b'h');
        assert_eq!(chunks.read(&mut small).expect("at end"), 0);
        assert!(chunks.seek(SeekFrom::Current(-100)).is_err());
        // Past the end reads nothing, as for a file.
        chunks.seek(SeekFrom::Start(100)).expect("seek past");
        assert_eq!(chunks.read(&mut small).expect("past end"), 0);
    }

    #[test]
    fn matches_a_contiguous_cursor_at_every_position() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let pieces: Vec<&[u8]> = data.chunks(37).collect();
        let mut chunks = reader(&pieces);
        for start in (0..1000).step_by(13) {
            let mut expected = io::Cursor::new(&data);
            expected.seek(SeekFrom::Start(start)).expect("seek");
            chunks.seek(SeekFrom::Start(start)).expect("seek");
            let mut wanted = vec![0u8; 100];
            let mut got = vec![0u8; 100];
            let wanted_count = expected.read(&mut wanted).expect("read");
            let got_count = chunks.read(&mut got).expect("read");
            // A chunked read may return fewer bytes only at the end.
            assert_eq!(got_count, wanted_count);
            assert_eq!(got[..got_count], wanted[..wanted_count]);
        }
    }
}
