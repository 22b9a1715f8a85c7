//! Where each frame's bytes sit inside a stored instance, found once at ingest so that a
//! frame request reads only those bytes (basic offset tables are often empty).

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
