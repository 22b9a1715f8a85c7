//! A JPEG 2000 frame's image header checked against its data set before OpenJPEG sees it.
//!
//! OpenJPEG allocates the image its codestream's SIZ marker declares, and structures for each
//! tile, before it reads a byte of coded data: a frame of a few bytes in a 64x64 instance that
//! claims a 10,000 x 15,000 image made it allocate 620 MB. So every frame to be decoded must
//! describe no more than the data set describes (Rows, Columns, SamplesPerPixel), in a bounded
//! number of tiles, or it is refused as undecodable. (The data set's own size is bounded by
//! [`MAX_DECODED_BYTES`](crate::MAX_DECODED_BYTES).) A smaller image is left to the decoder,
//! which refuses a frame that does not fill its image.

use dicom_dictionary_std::tags;
use dicom_encoding::adapters::PixelDataObject;
use dicom_object::DefaultDicomObject;

use crate::PixelError;
use crate::transcode::{JPEG_2000_FAMILY, required_number};

/// The most tiles a frame may be cut into: OpenJPEG keeps a few kilobytes per tile (its own
/// limit is 65,535 tiles, half a gigabyte), and real images use one tile or a few hundred.
const MAX_TILES: u64 = 4096;

/// Start of codestream and image and tile size markers.
const SOC: [u8; 2] = [0xFF, 0x4F];
const SIZ: [u8; 2] = [0xFF, 0x51];
/// The JP2 signature box (a codestream wrapped in JP2 boxes, which OpenJPEG also reads).
const JP2_SIGNATURE: [u8; 12] = [
    0, 0, 0, 0x0C, b'j', b'P', b' ', b' ', 0x0D, 0x0A, 0x87, 0x0A,
];

/// Checks the JPEG 2000 frames of `object` that will be decoded (`frame`, from 0, or all of
/// them); nothing to check for other transfer syntaxes.
pub(crate) fn check_frames(
    object: &DefaultDicomObject,
    frame: Option<u32>,
) -> Result<(), PixelError> {
    let syntax = object.meta().transfer_syntax().trim_end_matches('\0');
    if !JPEG_2000_FAMILY.contains(&syntax) {
        return Ok(());
    }
    let number = |tag, name| required_number(object, tag, name);
    let expected = Image {
        columns: number(tags::COLUMNS, "Columns")?,
        rows: number(tags::ROWS, "Rows")?,
        components: number(tags::SAMPLES_PER_PIXEL, "SamplesPerPixel")?,
    };
    let frames = match frame {
        Some(index) => index..index.saturating_add(1),
        None => 0..object.number_of_frames().unwrap_or(1).max(1),
    };
    for index in frames {
        // A frame that is not there is for the decoder to refuse.
        let Some(codestream) = object.frame_pixel_data(index) else {
            continue;
        };
        check_codestream(&codestream, &expected)?;
    }
    Ok(())
}

/// A frame's size and number of components.
#[derive(Debug)]
struct Image {
    columns: u32,
    rows: u32,
    components: u32,
}

/// Checks one frame's codestream (raw, or wrapped in JP2 boxes) against `expected`.
fn check_codestream(frame: &[u8], expected: &Image) -> Result<(), PixelError> {
    let codestream = if frame.starts_with(&JP2_SIGNATURE) {
        jp2_codestream(frame)?
    } else {
        frame
    };
    let header = Header::parse(codestream)?;
    let image = &header.image;
    if image.columns > expected.columns
        || image.rows > expected.rows
        || image.components > expected.components
    {
        return Err(undecodable(format!(
            "a frame's JPEG 2000 header describes a {}x{} image of {} components, larger than \
             the data set's {}x{} of {}",
            header.image.columns,
            header.image.rows,
            header.image.components,
            expected.columns,
            expected.rows,
            expected.components
        )));
    }
    if header.tiles > MAX_TILES {
        return Err(undecodable(format!(
            "a frame's JPEG 2000 header cuts it into {} tiles (at most {MAX_TILES})",
            header.tiles
        )));
    }
    Ok(())
}

/// The content of the first contiguous codestream box (`jp2c`) of a JP2 file.
fn jp2_codestream(file: &[u8]) -> Result<&[u8], PixelError> {
    let mut rest = file;
    while rest.len() >= 8 {
        let length = u64::from(read_u32(rest, 0)?);
        let kind = &rest[4..8];
        let (header, length) = match length {
            // The box runs to the end of the file.
            0 => (8, rest.len() as u64),
            // The length is in the next eight bytes.
            1 => (16, read_u64(rest, 8)?),
            length => (8, length),
        };
        let end = usize::try_from(length)
            .ok()
            .filter(|&end| end >= header && end <= rest.len())
            .ok_or_else(|| undecodable("a JP2 box is longer than the frame".into()))?;
        if kind == b"jp2c" {
            return Ok(&rest[header..end]);
        }
        rest = &rest[end..];
    }
    Err(undecodable("a JP2 frame holds no codestream".into()))
}

/// What OpenJPEG allocates by: the image and its tiles.
struct Header {
    image: Image,
    tiles: u64,
}

impl Header {
    /// Reads the SIZ marker segment, which must follow the start of the codestream.
    fn parse(codestream: &[u8]) -> Result<Header, PixelError> {
        if !codestream.starts_with(&SOC) || codestream.get(2..4) != Some(&SIZ[..]) {
            return Err(undecodable(
                "a frame is not a JPEG 2000 codestream (no SOC and SIZ markers)".into(),
            ));
        }
        // After SOC, the SIZ marker and its length (Lsiz) and capabilities (Rsiz).
        let at = |offset: usize| read_u32(codestream, 8 + offset);
        let (width, height) = (at(0)?, at(4)?);
        let (image_x, image_y) = (at(8)?, at(12)?);
        let (tile_width, tile_height) = (at(16)?, at(20)?);
        let (tile_x, tile_y) = (at(24)?, at(28)?);
        let components = read_u16(codestream, 8 + 32)?;
        let extent = |end: u32, start: u32| {
            end.checked_sub(start).ok_or_else(|| {
                undecodable("a JPEG 2000 header's image ends before it starts".into())
            })
        };
        let tiles_along = |end: u32, start: u32, size: u32| {
            if size == 0 {
                return Err(undecodable("a JPEG 2000 header's tiles are empty".into()));
            }
            Ok(u64::from(extent(end, start)?).div_ceil(u64::from(size)))
        };
        Ok(Header {
            image: Image {
                columns: extent(width, image_x)?,
                rows: extent(height, image_y)?,
                components: u32::from(components),
            },
            tiles: tiles_along(width, tile_x, tile_width)?.saturating_mul(tiles_along(
                height,
                tile_y,
                tile_height,
            )?),
        })
    }
}

/// `N` bytes at `offset`, or an error when the header is cut short.
fn read_bytes<const N: usize>(bytes: &[u8], offset: usize) -> Result<[u8; N], PixelError> {
    bytes
        .get(offset..offset.saturating_add(N))
        .and_then(|slice| slice.try_into().ok())
        .ok_or_else(truncated)
}

fn read_u16(bytes: &[u8], offset: usize) -> Result<u16, PixelError> {
    read_bytes(bytes, offset).map(u16::from_be_bytes)
}

fn read_u32(bytes: &[u8], offset: usize) -> Result<u32, PixelError> {
    read_bytes(bytes, offset).map(u32::from_be_bytes)
}

fn read_u64(bytes: &[u8], offset: usize) -> Result<u64, PixelError> {
    read_bytes(bytes, offset).map(u64::from_be_bytes)
}

fn truncated() -> PixelError {
    undecodable("a frame's JPEG 2000 header is cut short".into())
}

fn undecodable(reason: String) -> PixelError {
    PixelError::Undecodable(reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SOC and a SIZ segment: an image of `width` x `height` (from the origin) in tiles of
    /// `tile` x `tile`, with `components` components.
    fn codestream(width: u32, height: u32, tile: u32, components: u16) -> Vec<u8> {
        let mut bytes = vec![0xFF, 0x4F, 0xFF, 0x51];
        bytes.extend_from_slice(&(38 + 3 * components).to_be_bytes());
        bytes.extend_from_slice(&0u16.to_be_bytes());
        for value in [width, height, 0, 0, tile, tile, 0, 0] {
            bytes.extend_from_slice(&value.to_be_bytes());
        }
        bytes.extend_from_slice(&components.to_be_bytes());
        for _ in 0..components {
            bytes.extend_from_slice(&[15, 1, 1]);
        }
        bytes
    }

    const CT: Image = Image {
        columns: 512,
        rows: 256,
        components: 1,
    };

    #[test]
    fn a_header_that_matches_its_data_set_passes() {
        check_codestream(&codestream(512, 256, 512, 1), &CT).expect("matches");
        check_codestream(&codestream(512, 256, 64, 1), &CT).expect("32 tiles");
    }

    #[test]
    fn a_header_larger_than_its_data_set_or_in_too_many_tiles_is_refused() {
        for hostile in [
            codestream(10_000, 15_000, 10_000, 1),
            codestream(512, 256, 512, 3),
            codestream(512, 256, 4, 1),
            codestream(512, 256, 0, 1),
            codestream(512, 256, 512, 1)[..20].to_vec(),
            b"not a codestream at all".to_vec(),
        ] {
            assert!(
                matches!(
                    check_codestream(&hostile, &CT),
                    Err(PixelError::Undecodable(_))
                ),
                "{hostile:?}"
            );
        }
    }

    #[test]
    fn a_jp2_file_is_checked_by_its_codestream_box() {
        let jp2 = |inner: &[u8], declared: Option<u32>| {
            let mut file = JP2_SIGNATURE.to_vec();
            let length = declared.unwrap_or(8 + inner.len() as u32);
            file.extend_from_slice(&length.to_be_bytes());
            file.extend_from_slice(b"jp2c");
            file.extend_from_slice(inner);
            file
        };
        check_codestream(&jp2(&codestream(512, 256, 512, 1), None), &CT).expect("matches");
        let large = jp2(&codestream(10_000, 15_000, 10_000, 1), None);
        assert!(check_codestream(&large, &CT).is_err());
        let overlong = jp2(&codestream(512, 256, 512, 1), Some(u32::MAX));
        assert!(check_codestream(&overlong, &CT).is_err());
        assert!(check_codestream(&JP2_SIGNATURE, &CT).is_err());
    }
}
