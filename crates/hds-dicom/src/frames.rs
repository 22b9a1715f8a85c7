//! Where each frame's bytes sit inside a stored instance, found once at ingest so that a
//! frame request reads only those bytes (basic offset tables are often empty).
//!
//! The frames are found by scanning the raw bytes of the file (headers only, values are skipped
//! by seeking) because the parser stops before the pixel data and does not report positions.
//! Native pixel data is returned in the byte order of the file: in the retired explicit VR big
//! endian transfer syntax, words of 16 bits or more are big endian.

use std::io::{self, BufReader, Read, Seek, SeekFrom};

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::{StandardDataDictionary, tags};

/// A byte range `[offset, offset + length)` within the stored instance's bytes (the whole
/// Part-10 file as received).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ByteRange {
    /// Start offset in the stored file.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
}

/// For each frame (index 0 = frame 1), the ranges whose concatenation is that frame's bytes:
/// one range for native pixel data, one or more fragments for encapsulated pixel data.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FrameMap {
    /// Ranges per frame.
    pub frames: Vec<Vec<ByteRange>>,
    /// Whether the pixel data is encapsulated (compressed); frames are then returned as is.
    pub encapsulated: bool,
}

impl FrameMap {
    /// The number of frames.
    pub fn frame_count(&self) -> usize {
        self.frames.len()
    }

    /// The total length of one frame's bytes; `None` if there is no such frame.
    pub fn frame_length(&self, frame_index: usize) -> Option<u64> {
        let ranges = self.frames.get(frame_index)?;
        Some(ranges.iter().map(|range| range.length).sum())
    }
}

/// Reads one frame's bytes (index 0 = frame 1) from a reader over the stored instance, by
/// seeking to each of its ranges. The offsets are relative to the start of the instance, which
/// must be at position 0 of `reader`.
pub fn read_frame<R: Read + Seek>(
    mut reader: R,
    frame_map: &FrameMap,
    frame_index: usize,
) -> io::Result<Vec<u8>> {
    let ranges = frame_map
        .frames
        .get(frame_index)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "frame index out of range"))?;
    let total: u64 = ranges.iter().map(|range| range.length).sum();
    let mut bytes = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for range in ranges {
        reader.seek(SeekFrom::Start(range.offset))?;
        let read = (&mut reader).take(range.length).read_to_end(&mut bytes)?;
        if read as u64 != range.length {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "frame range beyond the end of the instance",
            ));
        }
    }
    Ok(bytes)
}

/// Why the frames of an instance could not be located. Messages name the structure at fault,
/// never values.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Reading the instance failed (including a value that runs past the end of the file).
    #[error("could not read the instance while locating pixel data: {0}")]
    Io(#[from] io::Error),
    /// The encoded structure is broken: bad item tags, a value past the end of the file, too
    /// few bytes for the declared frames.
    #[error("{0}")]
    Malformed(&'static str),
    /// The top-level pixel data's own value is broken (cut short, fragments without their
    /// delimitation), while the data set around it is sound.
    #[error("{0}")]
    MalformedPixelData(&'static str),
    /// An attribute the frame layout depends on is missing or not a number.
    #[error("attribute {0} is missing or invalid")]
    ImageAttribute(&'static str),
}

/// How the data set after the file meta group is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DataSetEncoding {
    /// Explicit VR little endian (also every encapsulated transfer syntax).
    ExplicitLittle,
    /// Implicit VR little endian (`1.2.840.10008.1.2`).
    ImplicitLittle,
    /// Explicit VR big endian (`1.2.840.10008.1.2.2`, retired).
    ExplicitBig,
}

/// (0002,0000) File Meta Information Group Length.
const META_GROUP_LENGTH: Tag = Tag(0x0002, 0x0000);
/// Item, item delimitation and sequence delimitation tags: their group is `FFFE`.
const ITEM: Tag = Tag(0xFFFE, 0xE000);
const ITEM_DELIMITATION: Tag = Tag(0xFFFE, 0xE00D);
const SEQUENCE_DELIMITATION: Tag = Tag(0xFFFE, 0xE0DD);
const UNDEFINED_LENGTH: u32 = 0xFFFF_FFFF;
/// Nesting deeper than this is refused, so that a crafted file cannot exhaust the stack.
const MAX_SEQUENCE_DEPTH: u32 = 64;

/// One element (or item) header as found in the file.
#[derive(Debug, Clone, Copy)]
struct ElementHeader {
    tag: Tag,
    /// The VR bytes in explicit VR encodings; `None` for items and implicit VR.
    vr: Option<[u8; 2]>,
    length: u32,
}

/// Whether an explicit-VR header with these VR bytes has a 16-bit length (PS3.5 7.1.2, table
/// 7.1-2). Every other VR, an unknown one included, has two reserved bytes and a 32-bit length:
/// the parser reads an unknown VR as UN, so the scan must too, or the two would read different
/// lengths from the same header (the parser then allocating what four bytes of a value say).
fn has_short_length(vr: [u8; 2]) -> bool {
    matches!(
        &vr,
        b"AE"
            | b"AS"
            | b"AT"
            | b"CS"
            | b"DA"
            | b"DS"
            | b"DT"
            | b"FL"
            | b"FD"
            | b"IS"
            | b"LO"
            | b"LT"
            | b"PN"
            | b"SH"
            | b"SL"
            | b"SS"
            | b"ST"
            | b"TM"
            | b"UI"
            | b"UL"
            | b"US"
    )
}

/// A forward reader over the raw bytes of an instance that knows its position and skips values
/// by seeking, so that only headers are read.
struct Scanner<R> {
    inner: BufReader<R>,
    position: u64,
    end: u64,
}

impl<R: Read + Seek> Scanner<R> {
    fn new(mut reader: R) -> io::Result<Self> {
        let end = reader.seek(SeekFrom::End(0))?;
        reader.seek(SeekFrom::Start(0))?;
        Ok(Scanner {
            inner: BufReader::new(reader),
            position: 0,
            end,
        })
    }

    fn remaining(&self) -> u64 {
        self.end.saturating_sub(self.position)
    }

    fn read_array<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        let mut bytes = [0u8; N];
        self.inner.read_exact(&mut bytes)?;
        self.position += N as u64;
        Ok(bytes)
    }

    fn skip(&mut self, length: u64) -> Result<(), FrameError> {
        if length > self.remaining() {
            return Err(FrameError::Malformed(
                "a value runs past the end of the file",
            ));
        }
        let step = i64::try_from(length)
            .map_err(|_| FrameError::Malformed("a value runs past the end of the file"))?;
        self.inner.seek_relative(step)?;
        self.position += length;
        Ok(())
    }

    fn seek_to(&mut self, position: u64) -> Result<(), FrameError> {
        if position > self.end {
            return Err(FrameError::Malformed(
                "a value runs past the end of the file",
            ));
        }
        self.inner.seek(SeekFrom::Start(position))?;
        self.position = position;
        Ok(())
    }

    /// Reads the next element or item header; `None` at the very end of the file.
    fn read_header(
        &mut self,
        encoding: DataSetEncoding,
    ) -> Result<Option<ElementHeader>, FrameError> {
        if self.remaining() == 0 {
            return Ok(None);
        }
        let big_endian = encoding == DataSetEncoding::ExplicitBig;
        let u16_of = |bytes: [u8; 2]| {
            if big_endian {
                u16::from_be_bytes(bytes)
            } else {
                u16::from_le_bytes(bytes)
            }
        };
        let u32_of = |bytes: [u8; 4]| {
            if big_endian {
                u32::from_be_bytes(bytes)
            } else {
                u32::from_le_bytes(bytes)
            }
        };
        let tag_bytes: [u8; 4] = self.read_array()?;
        let tag = Tag(
            u16_of([tag_bytes[0], tag_bytes[1]]),
            u16_of([tag_bytes[2], tag_bytes[3]]),
        );
        if tag.group() == 0xFFFE || encoding == DataSetEncoding::ImplicitLittle {
            let length = u32_of(self.read_array()?);
            return Ok(Some(ElementHeader {
                tag,
                vr: None,
                length,
            }));
        }
        let vr: [u8; 2] = self.read_array()?;
        if !vr.iter().all(u8::is_ascii_uppercase) {
            return Err(FrameError::Malformed("an explicit VR is not two letters"));
        }
        // The parser reads a VR it does not know as UN; so does the scan.
        let vr = if VR::from_binary(vr).is_some() {
            vr
        } else {
            *b"UN"
        };
        let length = if has_short_length(vr) {
            u32::from(u16_of(self.read_array()?))
        } else {
            let _reserved: [u8; 2] = self.read_array()?;
            u32_of(self.read_array()?)
        };
        Ok(Some(ElementHeader {
            tag,
            vr: Some(vr),
            length,
        }))
    }

    /// Walks the elements of a data set (the top level has `limit` = end of file, an item of
    /// defined length its own end, an item of undefined length `None`: up to its item
    /// delimitation) checking that every value lies within its container, and returns where
    /// the top-level PixelData element's value starts. The top level is walked to the end of
    /// the file, past the pixel data too: a full parse (rendering, bulk update) reads the
    /// elements that follow it (trailing padding, signatures), and would otherwise allocate
    /// whatever length a hostile one claims.
    fn walk_data_set(
        &mut self,
        encoding: DataSetEncoding,
        limit: Option<u64>,
        depth: u32,
    ) -> Result<Option<PixelDataLocation>, FrameError> {
        if depth > MAX_SEQUENCE_DEPTH {
            return Err(FrameError::Malformed("sequences nested too deeply"));
        }
        let bound = limit.unwrap_or(self.end);
        let mut pixel_data = None;
        loop {
            if limit.is_some_and(|end| self.position >= end) {
                return Ok(pixel_data);
            }
            let Some(header) = self.read_header(encoding)? else {
                if limit.is_none() && depth > 0 {
                    return Err(FrameError::Malformed("an item has no delimitation item"));
                }
                return Ok(pixel_data);
            };
            if depth > 0 && header.tag == ITEM_DELIMITATION {
                return Ok(None);
            }
            // Items and delimiters belong in sequences. The parser steps over a stray one at the
            // top level and reads on.
            if depth == 0 && header.tag.group() == 0xFFFE {
                return Err(FrameError::Malformed(
                    "an item or delimiter outside any sequence",
                ));
            }
            if depth == 0 && header.tag == tags::PIXEL_DATA {
                if pixel_data.is_some() {
                    return Err(FrameError::Malformed("the pixel data appears twice"));
                }
                pixel_data = Some(PixelDataLocation {
                    value_offset: self.position,
                    length: (header.length != UNDEFINED_LENGTH).then_some(header.length),
                });
                match header.length {
                    UNDEFINED_LENGTH => self.skip_fragments(encoding),
                    length => self.skip(u64::from(length)),
                }
                .map_err(|error| match error {
                    FrameError::Malformed(reason) => FrameError::MalformedPixelData(reason),
                    other => other,
                })?;
                continue;
            }
            self.walk_value(header, encoding, bound, depth)?;
        }
    }

    /// Walks one element's value: into sequences, over fragments, past anything else.
    fn walk_value(
        &mut self,
        header: ElementHeader,
        encoding: DataSetEncoding,
        bound: u64,
        depth: u32,
    ) -> Result<(), FrameError> {
        let is_sequence = match header.vr {
            Some(vr) => vr == *b"SQ",
            None => is_dictionary_sequence(header.tag),
        };
        if header.length == UNDEFINED_LENGTH {
            // Only pixel data holds fragments: the parser reads any other value of undefined
            // length as a sequence of data set items, whatever its VR, so the scan walks it so.
            if header.tag == tags::PIXEL_DATA {
                return self.skip_fragments(encoding);
            }
            // An UN value of undefined length holds a sequence in implicit VR little endian
            // (PS3.5 6.2.2). The parser misreads such values as lengths of gigabytes that it then
            // tries to allocate, so they are refused here.
            if header.vr == Some(*b"UN") {
                return Err(FrameError::Malformed(
                    "UN value of undefined length (unsupported)",
                ));
            }
            let nested = encoding;
            return self.walk_items(nested, None, depth + 1);
        }
        let end = self.position + u64::from(header.length);
        if end > bound {
            return Err(FrameError::Malformed(
                "a value runs past the end of its container",
            ));
        }
        if !is_sequence && !header.length.is_multiple_of(value_size(parsed_vr(&header))) {
            return Err(FrameError::Malformed(
                "a binary value's length is not a multiple of its value size",
            ));
        }
        if is_sequence {
            self.walk_items(encoding, Some(end), depth + 1)?;
            if self.position != end {
                return Err(FrameError::Malformed("a sequence overruns its length"));
            }
            Ok(())
        } else {
            self.skip(u64::from(header.length))
        }
    }

    /// Walks the items of a sequence, up to `limit` or to its sequence delimitation item.
    fn walk_items(
        &mut self,
        encoding: DataSetEncoding,
        limit: Option<u64>,
        depth: u32,
    ) -> Result<(), FrameError> {
        if depth > MAX_SEQUENCE_DEPTH {
            return Err(FrameError::Malformed("sequences nested too deeply"));
        }
        loop {
            if limit.is_some_and(|end| self.position >= end) {
                return Ok(());
            }
            let header = self
                .read_header(encoding)?
                .ok_or(FrameError::Malformed("a sequence has no delimitation item"))?;
            match header.tag {
                SEQUENCE_DELIMITATION if limit.is_none() => return Ok(()),
                ITEM if header.length == UNDEFINED_LENGTH => {
                    self.walk_data_set(encoding, None, depth + 1)?;
                }
                ITEM => {
                    let end = self.position + u64::from(header.length);
                    if end > limit.unwrap_or(self.end) {
                        return Err(FrameError::Malformed("an item runs past its sequence"));
                    }
                    self.walk_data_set(encoding, Some(end), depth + 1)?;
                    if self.position != end {
                        return Err(FrameError::Malformed("an item overruns its length"));
                    }
                }
                _ => {
                    return Err(FrameError::Malformed(
                        "a sequence holds something other than items",
                    ));
                }
            }
        }
    }

    /// Skips encapsulated pixel data nested in an item (an icon image, for instance).
    fn skip_fragments(&mut self, encoding: DataSetEncoding) -> Result<(), FrameError> {
        loop {
            let header = self
                .read_header(encoding)?
                .ok_or(FrameError::Malformed("fragments have no delimitation item"))?;
            match header.tag {
                SEQUENCE_DELIMITATION => return Ok(()),
                ITEM if header.length != UNDEFINED_LENGTH => self.skip(u64::from(header.length))?,
                _ => {
                    return Err(FrameError::Malformed(
                        "invalid item in encapsulated pixel data",
                    ));
                }
            }
        }
    }
}

/// The VR the parser reads an element with: the explicit VR (an unknown one already read as
/// UN), or in implicit VR what the standard dictionary says (the first of its choices; OW for
/// pixel and overlay data; UN for an attribute it does not know), as dicom-rs decides it.
fn parsed_vr(header: &ElementHeader) -> VR {
    if let Some(vr) = header.vr {
        return VR::from_binary(vr).unwrap_or(VR::UN);
    }
    let tag = header.tag;
    if tag == tags::PIXEL_DATA || (tag.group() >> 8 == 0x60 && tag.element() == 0x3000) {
        return VR::OW;
    }
    StandardDataDictionary
        .by_tag(tag)
        .map_or(VR::UN, |entry| entry.vr().relaxed())
}

/// The size of one value of a binary VR (1 for text and bytes). The parser reads such a value
/// as `length / size` numbers and moves on by only that many bytes, so a length that is not a
/// multiple would leave it reading its next header inside this value, where the scan never
/// looked: such a value is refused.
fn value_size(vr: VR) -> u32 {
    match vr {
        VR::US | VR::SS | VR::OW => 2,
        VR::UL | VR::SL | VR::FL | VR::OF | VR::OL | VR::AT => 4,
        VR::FD | VR::OD | VR::SV | VR::UV | VR::OV => 8,
        _ => 1,
    }
}

/// Whether the standard dictionary says this attribute is a sequence (implicit VR carries no VR).
fn is_dictionary_sequence(tag: Tag) -> bool {
    StandardDataDictionary
        .by_tag(tag)
        .is_some_and(|entry| entry.vr() == VirtualVr::Exact(VR::SQ))
}

/// Where the PixelData element's value starts, and its length (`None` when undefined, that is
/// encapsulated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PixelDataLocation {
    pub(crate) value_offset: u64,
    pub(crate) length: Option<u32>,
}

/// The structure of a Part-10 file as far as the pixel data, found by reading headers only.
#[derive(Debug, Clone)]
pub(crate) struct FileLayout {
    /// The transfer syntax UID of the file meta group, padding stripped.
    pub(crate) transfer_syntax_uid: String,
    end: u64,
    pixel_data: Option<PixelDataLocation>,
}

/// Reads the preamble and the file meta group; returns the transfer syntax UID.
fn read_file_meta<R: Read + Seek>(scanner: &mut Scanner<R>) -> Result<String, FrameError> {
    let start: [u8; 4] = scanner.read_array()?;
    if start != *b"DICM" {
        scanner.seek_to(128)?;
        let magic: [u8; 4] = scanner.read_array()?;
        if magic != *b"DICM" {
            return Err(FrameError::Malformed("no DICM prefix"));
        }
    }
    // The meta group is always explicit VR little endian. It opens with its group length
    // (0002,0000), and the parser reads elements until that many bytes are consumed, whatever
    // their group, then starts the data set there. The scan follows the same rule: ending the
    // group at the first element of another group instead would check a data set that starts
    // elsewhere than the one the parser reads, whose lengths it would then trust.
    let group_length_header = scanner
        .read_header(DataSetEncoding::ExplicitLittle)?
        .ok_or(FrameError::Malformed("truncated file meta group"))?;
    if group_length_header.tag != META_GROUP_LENGTH || group_length_header.length != 4 {
        return Err(FrameError::Malformed(
            "the file meta group does not open with its group length",
        ));
    }
    let group_length = u64::from(u32::from_le_bytes(scanner.read_array()?));
    let group_start = scanner.position;
    let mut transfer_syntax_uid = None;
    while scanner.position - group_start < group_length {
        let header = scanner
            .read_header(DataSetEncoding::ExplicitLittle)?
            .ok_or(FrameError::Malformed("truncated file meta group"))?;
        if header.length == UNDEFINED_LENGTH {
            return Err(FrameError::Malformed(
                "a file meta element of undefined length",
            ));
        }
        if header.tag == tags::TRANSFER_SYNTAX_UID && header.length <= 256 {
            let mut value = vec![0u8; header.length as usize];
            scanner.inner.read_exact(&mut value)?;
            scanner.position += u64::from(header.length);
            let text = String::from_utf8_lossy(&value);
            transfer_syntax_uid = Some(text.trim_end_matches(['\0', ' ']).trim().to_string());
        } else {
            scanner.skip(u64::from(header.length))?;
        }
    }
    transfer_syntax_uid.ok_or(FrameError::Malformed(
        "no transfer syntax in the file meta group",
    ))
}

/// Scans a Part-10 file's whole structure, reading headers only: the file meta group, then
/// (with the encoding `encoding_of` gives for its transfer syntax) every element, item and
/// sequence, the pixel data's fragments and whatever follows the pixel data, checking that each
/// value lies within its container. A file that passes can be handed to the parser, whole or up
/// to its pixel data, without it trusting absurd lengths.
pub(crate) fn scan_layout<R: Read + Seek, E>(
    reader: R,
    encoding_of: impl FnOnce(&str) -> Result<DataSetEncoding, E>,
) -> Result<Result<FileLayout, FrameError>, E> {
    let mut scanner = match Scanner::new(reader) {
        Ok(scanner) => scanner,
        Err(error) => return Ok(Err(error.into())),
    };
    let transfer_syntax_uid = match read_file_meta(&mut scanner) {
        Ok(uid) => uid,
        Err(error) => return Ok(Err(error)),
    };
    let encoding = encoding_of(&transfer_syntax_uid)?;
    let bound = scanner.end;
    Ok(scanner
        .walk_data_set(encoding, Some(bound), 0)
        .map(|pixel_data| FileLayout {
            transfer_syntax_uid,
            end: bound,
            pixel_data,
        }))
}

/// What the data set says about the frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ImageGeometry {
    pub(crate) number_of_frames: u32,
    pub(crate) rows: u32,
    pub(crate) columns: u32,
    pub(crate) samples_per_pixel: u32,
    pub(crate) bits_allocated: u32,
    /// Photometric interpretation YBR_FULL_422: native frames then hold two samples per pixel
    /// (two luminance values share one pair of chrominance values), not three.
    pub(crate) chroma_subsampled_422: bool,
}

/// Locates the frames of an instance whose layout [`scan_layout`] found. `Ok(None)` when there
/// is no pixel data, or when the frames cannot be addressed one by one although the file is
/// sound: 1-bit multi-frame pixel data whose frames do not start on a byte boundary, and
/// encapsulated streams whose fragments cannot be assigned to frames (video transfer syntaxes,
/// for instance).
pub(crate) fn build_frame_map<R: Read + Seek>(
    reader: R,
    layout: &FileLayout,
    encapsulated: bool,
    geometry: impl FnOnce() -> Result<ImageGeometry, FrameError>,
) -> Result<Option<FrameMap>, FrameError> {
    let Some(location) = layout.pixel_data else {
        return Ok(None);
    };
    let geometry = geometry()?;
    match (encapsulated, location.length) {
        (false, Some(length)) => {
            if location.value_offset + u64::from(length) > layout.end {
                return Err(FrameError::Malformed(
                    "pixel data runs past the end of the file",
                ));
            }
            native_frames(&location, length, &geometry)
        }
        (true, None) => {
            let mut scanner = Scanner::new(reader)?;
            scanner.seek_to(location.value_offset)?;
            encapsulated_frames(&mut scanner, geometry.number_of_frames)
        }
        (false, None) => Err(FrameError::Malformed(
            "encapsulated pixel data in a native transfer syntax",
        )),
        (true, Some(_)) => Err(FrameError::Malformed(
            "native pixel data in an encapsulated transfer syntax",
        )),
    }
}

fn native_frames(
    location: &PixelDataLocation,
    length: u32,
    geometry: &ImageGeometry,
) -> Result<Option<FrameMap>, FrameError> {
    let samples_per_pixel = if geometry.chroma_subsampled_422 && geometry.samples_per_pixel == 3 {
        2
    } else {
        u64::from(geometry.samples_per_pixel)
    };
    let frame_bits = u64::from(geometry.rows)
        * u64::from(geometry.columns)
        * samples_per_pixel
        * u64::from(geometry.bits_allocated);
    let frame_count = u64::from(geometry.number_of_frames);
    if frame_bits % 8 != 0 && frame_count > 1 {
        return Ok(None);
    }
    let frame_length = frame_bits.div_ceil(8);
    if frame_length == 0 && frame_count > 0 {
        return Err(FrameError::Malformed("frames of zero size"));
    }
    let needed = if frame_bits % 8 == 0 {
        frame_length * frame_count
    } else {
        frame_length
    };
    if needed > u64::from(length) {
        return Err(FrameError::Malformed(
            "pixel data shorter than its declared frames",
        ));
    }
    let frames = (0..frame_count)
        .map(|index| {
            vec![ByteRange {
                offset: location.value_offset + index * frame_length,
                length: frame_length,
            }]
        })
        .collect();
    Ok(Some(FrameMap {
        frames,
        encapsulated: false,
    }))
}

/// One fragment of encapsulated pixel data.
#[derive(Debug, Clone, Copy)]
struct Fragment {
    /// Offset of the item header relative to the first fragment's item header, the origin of
    /// basic offset table values.
    relative_offset: u64,
    value: ByteRange,
}

fn encapsulated_frames<R: Read + Seek>(
    scanner: &mut Scanner<R>,
    frame_count: u32,
) -> Result<Option<FrameMap>, FrameError> {
    let little = DataSetEncoding::ExplicitLittle;
    let table_header = scanner
        .read_header(little)?
        .ok_or(FrameError::Malformed("no basic offset table item"))?;
    if table_header.tag != ITEM || table_header.length == UNDEFINED_LENGTH {
        return Err(FrameError::Malformed("no basic offset table item"));
    }
    if table_header.length % 4 != 0 || u64::from(table_header.length) > scanner.remaining() {
        return Err(FrameError::Malformed("invalid basic offset table"));
    }
    let mut offset_table = Vec::with_capacity(table_header.length as usize / 4);
    for _ in 0..table_header.length / 4 {
        offset_table.push(u64::from(u32::from_le_bytes(scanner.read_array()?)));
    }

    let first_fragment_position = scanner.position;
    let mut fragments = Vec::new();
    loop {
        let header_position = scanner.position;
        // Some writers omit the sequence delimitation item at the very end of the file.
        let Some(header) = scanner.read_header(little)? else {
            break;
        };
        match header.tag {
            SEQUENCE_DELIMITATION => break,
            ITEM if header.length != UNDEFINED_LENGTH => {
                let value = ByteRange {
                    offset: scanner.position,
                    length: u64::from(header.length),
                };
                scanner.skip(value.length)?;
                fragments.push(Fragment {
                    relative_offset: header_position - first_fragment_position,
                    value,
                });
            }
            _ => {
                return Err(FrameError::Malformed(
                    "invalid item in encapsulated pixel data",
                ));
            }
        }
    }

    let frame_count = frame_count as usize;
    if frame_count > 0 && fragments.is_empty() {
        return Err(FrameError::Malformed(
            "encapsulated pixel data without fragments",
        ));
    }
    let ranges = |fragments: &[Fragment]| fragments.iter().map(|f| f.value).collect::<Vec<_>>();
    let frames: Option<Vec<Vec<ByteRange>>> = if fragments.len() == frame_count {
        Some(fragments.iter().map(|f| vec![f.value]).collect())
    } else if frame_count == 1 {
        Some(vec![ranges(&fragments)])
    } else if fragments.len() < frame_count {
        None
    } else if let Some(frames) = group_by_offset_table(&fragments, &offset_table, frame_count) {
        Some(frames)
    } else {
        group_by_end_markers(scanner, &fragments, frame_count)?
    };
    Ok(frames.map(|frames| FrameMap {
        frames,
        encapsulated: true,
    }))
}

/// Assigns fragments to frames with the basic offset table: frame `i` is made of the fragments
/// from offset `table[i]` up to `table[i + 1]`. `None` if the table does not fit the fragments.
fn group_by_offset_table(
    fragments: &[Fragment],
    offset_table: &[u64],
    frame_count: usize,
) -> Option<Vec<Vec<ByteRange>>> {
    if offset_table.len() != frame_count || offset_table.first() != Some(&0) {
        return None;
    }
    let mut frames = Vec::with_capacity(frame_count);
    for (index, &start) in offset_table.iter().enumerate() {
        let end = offset_table.get(index + 1).copied().unwrap_or(u64::MAX);
        if end <= start {
            return None;
        }
        if !fragments.iter().any(|f| f.relative_offset == start) {
            return None;
        }
        let frame: Vec<ByteRange> = fragments
            .iter()
            .filter(|f| (start..end).contains(&f.relative_offset))
            .map(|f| f.value)
            .collect();
        frames.push(frame);
    }
    Some(frames)
}

/// Assigns fragments to frames by the end-of-image marker (`FFD9`: JPEG EOI, JPEG-LS EOI and
/// JPEG 2000 EOC) that ends each frame's last fragment, possibly followed by one padding byte.
/// `None` unless this yields exactly the declared number of frames.
fn group_by_end_markers<R: Read + Seek>(
    scanner: &mut Scanner<R>,
    fragments: &[Fragment],
    frame_count: usize,
) -> Result<Option<Vec<Vec<ByteRange>>>, FrameError> {
    let mut frames = Vec::with_capacity(frame_count);
    let mut current = Vec::new();
    for fragment in fragments {
        current.push(fragment.value);
        let tail_length = fragment.value.length.min(3);
        scanner.seek_to(fragment.value.offset + fragment.value.length - tail_length)?;
        let mut tail = [0u8; 3];
        let tail = &mut tail[..tail_length as usize];
        scanner.inner.read_exact(tail)?;
        scanner.position += tail_length;
        let ends_frame = tail.ends_with(&[0xFF, 0xD9]) || tail.ends_with(&[0xFF, 0xD9, 0x00]);
        if ends_frame {
            frames.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        frames.push(current);
    }
    Ok((frames.len() == frame_count).then_some(frames))
}
