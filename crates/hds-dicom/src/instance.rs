//! Parsing and validating one Part-10 instance.

use std::io::{Read, Seek, SeekFrom};

use dicom_core::header::{HasLength, Header};
use dicom_core::value::Value;
use dicom_core::{Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_encoding::Codec;
use dicom_encoding::transfer_syntax::{Endianness, TransferSyntaxIndex};
use dicom_object::mem::{InMemDicomObject, InMemElement};
use dicom_object::{OpenFileOptions, ReadError};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use serde_json::{Map, Value as JsonValue};

use crate::attributes::{
    MAX_SEARCH_VALUES, QueryLevel, SearchKind, SearchableAttribute, level_tags,
    searchable_attributes, within_length_limit,
};
use crate::frames::{
    DataSetEncoding, FrameError, FrameMap, ImageGeometry, build_frame_map, scan_layout,
};
use crate::normalize::{
    is_valid_uid, name_words, normalize_exact, normalize_person_name, parse_date,
};
use crate::unknown_vr::{UnknownVrContext, reinterpret_unknown_vrs};

/// Why an instance was refused. The messages name the problem but never echo values.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstanceError {
    /// Not a readable Part-10 file.
    #[error("not a valid DICOM Part-10 instance: {0}")]
    Unreadable(String),
    /// A required attribute is missing or empty.
    #[error("required attribute {0} is missing")]
    MissingAttribute(&'static str),
    /// A UID attribute is not 1-64 characters of digits and dots.
    #[error("attribute {0} is not a valid UID")]
    InvalidUid(&'static str),
    /// The transfer syntax is unknown, or its data set encoding cannot be read (deflated).
    #[error("unsupported transfer syntax {0}")]
    UnsupportedTransferSyntax(String),
    /// An attribute the frame layout depends on (NumberOfFrames, Rows, Columns,
    /// SamplesPerPixel, BitsAllocated) is missing or not a number.
    #[error("attribute {0} is missing or invalid")]
    InvalidAttribute(&'static str),
    /// A searchable attribute's value is longer than its value representation allows, past
    /// the tolerance of [`crate::attributes::within_length_limit`].
    #[error("attribute {0} is longer than its value representation allows")]
    ValueTooLong(&'static str),
    /// A searchable attribute has more than [`crate::attributes::MAX_SEARCH_VALUES`] values.
    #[error("attribute {0} has more values than the limit")]
    TooManyValues(&'static str),
    /// The pixel data is structurally broken (see [`FrameError`]).
    #[error("invalid pixel data: {0}")]
    PixelData(#[from] FrameError),
    /// Reading the instance failed.
    #[error("could not read the instance: {0}")]
    Io(#[from] std::io::Error),
}

/// A searchable value of one instance, already normalized (see [`crate::normalize`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchValue {
    /// Exact-match value (trailing/leading padding stripped).
    Exact(String),
    /// A person name: the exact normalized full value, and the normalized name-part words
    /// (lowercase, accents removed) whose prefixes fuzzy matching uses.
    PersonName {
        /// The whole value, padding stripped.
        exact: String,
        /// Lowercase accent-free words of all name parts.
        words: Vec<String>,
    },
    /// A date as `YYYYMMDD`.
    Date(u32),
}

/// One searchable attribute value of an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchTerm {
    /// Which attribute.
    pub attribute: &'static SearchableAttribute,
    /// Its value; an attribute with several values (e.g. ModalitiesInStudy) yields several terms.
    pub value: SearchValue,
}

/// What ingest learns from one instance.
#[derive(Debug, Clone)]
pub struct ParsedInstance {
    /// StudyInstanceUID (0020,000D), validated, padding stripped.
    pub study_instance_uid: String,
    /// SeriesInstanceUID (0020,000E).
    pub series_instance_uid: String,
    /// SOPInstanceUID (0008,0018).
    pub sop_instance_uid: String,
    /// SOPClassUID (0008,0016).
    pub sop_class_uid: String,
    /// TransferSyntaxUID from the file meta group.
    pub transfer_syntax_uid: String,
    /// Study- and patient-level attributes as a DICOM JSON object (keys are 8-hex tags).
    pub study_attributes: DicomJsonText,
    /// Series-level attributes as a DICOM JSON object.
    pub series_attributes: DicomJsonText,
    /// Instance-level attributes as a DICOM JSON object, TransferSyntaxUID last.
    pub instance_attributes: DicomJsonText,
    /// The whole data set as DICOM JSON, bulk data (pixel data and other large binary values)
    /// left out.
    pub metadata: DicomJsonText,
    /// The searchable values, at their levels.
    pub search_terms: Vec<SearchTerm>,
    /// Where the frames are, when the instance has pixel data.
    pub frames: Option<FrameMap>,
}

impl ParsedInstance {
    /// The search terms at one level.
    pub fn terms_at(&self, level: QueryLevel) -> impl Iterator<Item = &SearchTerm> {
        self.search_terms
            .iter()
            .filter(move |term| term.attribute.level == level)
    }
}

/// Binary values longer than this are bulk data and are left out of the metadata.
pub const BULK_DATA_THRESHOLD: usize = 1024;

/// Parses one Part-10 instance (preamble and meta group included) without reading pixel data
/// into memory: large instances are parsed from a file.
///
/// The instance must start at position 0 of `reader`; the frame map's offsets are positions in
/// `reader`.
pub fn parse_instance<R: Read + Seek>(mut reader: R) -> Result<ParsedInstance, InstanceError> {
    // The structure is checked first, reading headers only: the parser would otherwise
    // allocate whatever length a broken or hostile header claims.
    let layout = scan_layout(&mut reader, |uid| {
        let transfer_syntax = TransferSyntaxRegistry
            .get(uid)
            .ok_or_else(|| InstanceError::UnsupportedTransferSyntax(uid.to_string()))?;
        if matches!(transfer_syntax.codec(), Codec::Dataset(_)) {
            // A deflated data set has no addressable pixel data in the file.
            return Err(InstanceError::UnsupportedTransferSyntax(uid.to_string()));
        }
        Ok(match (uid, transfer_syntax.endianness()) {
            (_, Endianness::Big) => DataSetEncoding::ExplicitBig,
            (uids::IMPLICIT_VR_LITTLE_ENDIAN, _) => DataSetEncoding::ImplicitLittle,
            _ => DataSetEncoding::ExplicitLittle,
        })
    })?
    .map_err(|error| match error {
        FrameError::MalformedPixelData(_) => InstanceError::PixelData(error),
        other => InstanceError::Unreadable(other.to_string()),
    })?;
    let transfer_syntax_uid = layout.transfer_syntax_uid.clone();
    let transfer_syntax = TransferSyntaxRegistry
        .get(&transfer_syntax_uid)
        .ok_or_else(|| InstanceError::UnsupportedTransferSyntax(transfer_syntax_uid.clone()))?;

    reader.seek(SeekFrom::Start(0))?;
    let object = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .from_reader(&mut reader)
        .map_err(read_error)?;
    let big_endian = transfer_syntax.endianness() == Endianness::Big;
    let object = object.into_inner();
    let context = UnknownVrContext::of(&object, big_endian);
    let object = reinterpret_unknown_vrs(object, &context);

    let study_instance_uid = required_uid(&object, tags::STUDY_INSTANCE_UID, "StudyInstanceUID")?;
    let series_instance_uid =
        required_uid(&object, tags::SERIES_INSTANCE_UID, "SeriesInstanceUID")?;
    let sop_instance_uid = required_uid(&object, tags::SOP_INSTANCE_UID, "SOPInstanceUID")?;
    let sop_class_uid = required_uid(&object, tags::SOP_CLASS_UID, "SOPClassUID")?;
    let encapsulated = transfer_syntax.is_encapsulated_pixel_data();

    let frames = build_frame_map(&mut reader, &layout, encapsulated, || {
        image_geometry(&object)
    })
    .map_err(|error| match error {
        FrameError::ImageAttribute(keyword) => InstanceError::InvalidAttribute(keyword),
        other => InstanceError::PixelData(other),
    })?;
    // Checked before anything else is derived from the values: a hostile value costs only
    // the scan that refuses it.
    let search_terms = search_terms(&object)?;
    let metadata = DicomJsonText::of(&object);
    let transfer_syntax = serde_json::json!({ "vr": "UI", "Value": [transfer_syntax_uid] });
    let instance_attributes = DicomJsonText::of_level(
        &object,
        QueryLevel::Instance,
        Some((tags::TRANSFER_SYNTAX_UID, &transfer_syntax)),
    );

    Ok(ParsedInstance {
        study_attributes: DicomJsonText::of_level(&object, QueryLevel::Study, None),
        series_attributes: DicomJsonText::of_level(&object, QueryLevel::Series, None),
        instance_attributes,
        search_terms,
        metadata,
        frames,
        study_instance_uid,
        series_instance_uid,
        sop_instance_uid,
        sop_class_uid,
        transfer_syntax_uid,
    })
}

fn read_error(error: ReadError) -> InstanceError {
    match error {
        ReadError::ReadUnrecognizedTransferSyntax { uid, .. } => {
            InstanceError::UnsupportedTransferSyntax(uid)
        }
        ReadError::ReadUnsupportedTransferSyntax { uid, .. }
        | ReadError::ReadUnsupportedTransferSyntaxWithSuggestion { uid, .. } => {
            InstanceError::UnsupportedTransferSyntax(uid.to_string())
        }
        other => InstanceError::Unreadable(error_chain(&other)),
    }
}

/// The error and its sources, joined: the parser's top-level messages alone say little.
/// Parser messages name tags, positions and lengths, not values.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

fn required_uid(
    object: &InMemDicomObject,
    tag: Tag,
    keyword: &'static str,
) -> Result<String, InstanceError> {
    let element = object
        .get(tag)
        .ok_or(InstanceError::MissingAttribute(keyword))?;
    let text = element
        .to_str()
        .map_err(|_| InstanceError::InvalidUid(keyword))?;
    let value = normalize_exact(&text);
    if value.is_empty() {
        return Err(InstanceError::MissingAttribute(keyword));
    }
    if !is_valid_uid(&value) {
        return Err(InstanceError::InvalidUid(keyword));
    }
    Ok(value)
}

fn image_geometry(object: &InMemDicomObject) -> Result<ImageGeometry, FrameError> {
    // Rows, Columns and BitsAllocated only matter, and so are only required, when there is
    // pixel data: this runs only then.
    let number = |tag: Tag, keyword: &'static str, default: Option<u32>| match object.get(tag) {
        None => default.ok_or(FrameError::ImageAttribute(keyword)),
        Some(element) if element.is_empty() => default.ok_or(FrameError::ImageAttribute(keyword)),
        Some(element) => element
            .to_int::<u32>()
            .map_err(|_| FrameError::ImageAttribute(keyword)),
    };
    Ok(ImageGeometry {
        number_of_frames: number(tags::NUMBER_OF_FRAMES, "NumberOfFrames", Some(1))?,
        rows: number(tags::ROWS, "Rows", None)?,
        columns: number(tags::COLUMNS, "Columns", None)?,
        samples_per_pixel: number(tags::SAMPLES_PER_PIXEL, "SamplesPerPixel", Some(1))?,
        bits_allocated: number(tags::BITS_ALLOCATED, "BitsAllocated", None)?,
        chroma_subsampled_422: object
            .get(tags::PHOTOMETRIC_INTERPRETATION)
            .and_then(|element| element.to_str().ok())
            .is_some_and(|value| normalize_exact(&value) == "YBR_FULL_422"),
    })
}

/// The DICOM JSON key of a tag: 8 upper-case hex digits.
pub fn tag_key(tag: Tag) -> String {
    tag_key_digits(tag).into_iter().map(char::from).collect()
}

/// The digits of [`tag_key`], without formatting machinery: every element of every stored
/// instance is written under one.
fn tag_key_digits(tag: Tag) -> [u8; 8] {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let value = (u32::from(tag.group()) << 16) | u32::from(tag.element());
    std::array::from_fn(|index| HEX[((value >> (28 - 4 * index)) & 0xF) as usize])
}

/// Whether an element is bulk data, left out of metadata: pixel data of any kind, encapsulated
/// values, and binary values longer than [`BULK_DATA_THRESHOLD`].
fn is_bulk_data(element: &InMemElement) -> bool {
    if matches!(
        element.tag(),
        tags::PIXEL_DATA | tags::FLOAT_PIXEL_DATA | tags::DOUBLE_FLOAT_PIXEL_DATA
    ) {
        return true;
    }
    match element.value() {
        Value::PixelSequence(_) => true,
        Value::Sequence(_) => false,
        Value::Primitive(value) => {
            matches!(
                element.vr(),
                VR::OB | VR::OD | VR::OF | VR::OL | VR::OV | VR::OW | VR::UN
            ) && value.calculate_byte_len() > BULK_DATA_THRESHOLD
        }
    }
}

/// A DICOM JSON object as text (keys 8 upper-case hex digits, in tag order, bulk data left
/// out): an instance's metadata, or the attributes of one of its query levels.
///
/// Why text rather than a `serde_json` map: every store seals these as they are, and only an
/// instance under extended query tags reads elements out of them. Written straight from the
/// data set, the text costs no tree of maps and strings to build, copy and drop (about a
/// tenth of hds's CPU per store at 33 KiB; docs/benchmarks.md, "Metadata written as text").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DicomJsonText(String);

impl DicomJsonText {
    /// The DICOM JSON (PS3.18 F) of `object`: every element but bulk data, sequences nested.
    /// An element dicom-json cannot serialize is left out rather than failing the instance.
    pub fn of(object: &InMemDicomObject) -> DicomJsonText {
        let mut text = Vec::with_capacity(4096);
        write_data_set(object, &mut text);
        DicomJsonText::from_written(text)
    }

    /// The elements of `object` at `level` (the ones [`DicomJsonText::of`] keeps), then
    /// `last`, an element from outside the data set.
    pub fn of_level(
        object: &InMemDicomObject,
        level: QueryLevel,
        last: Option<(Tag, &JsonValue)>,
    ) -> DicomJsonText {
        let mut text = Vec::with_capacity(512);
        text.push(b'{');
        let mut first = true;
        for element in level_tags(level).iter().filter_map(|&tag| object.get(tag)) {
            first &= !write_element(element, first, &mut text);
        }
        if let Some((tag, value)) = last {
            let start = text.len();
            write_key(tag, first, &mut text);
            if serde_json::to_writer(&mut text, value).is_err() {
                text.truncate(start);
            }
        }
        text.push(b'}');
        DicomJsonText::from_written(text)
    }

    /// Only JSON written by serde_json and ASCII punctuation go into `text`.
    fn from_written(text: Vec<u8>) -> DicomJsonText {
        DicomJsonText(String::from_utf8(text).unwrap_or_else(|_| "{}".to_owned()))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The elements, parsed.
    pub fn to_map(&self) -> Result<Map<String, JsonValue>, serde_json::Error> {
        serde_json::from_str(&self.0)
    }
}

/// The text of a DICOM JSON object held as a map (elements in the map's order).
impl From<&Map<String, JsonValue>> for DicomJsonText {
    fn from(map: &Map<String, JsonValue>) -> DicomJsonText {
        DicomJsonText(JsonValue::Object(map.clone()).to_string())
    }
}

/// JSON documents joined as they are into one JSON array, without parsing them again.
pub fn json_array<'a>(documents: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut array = vec![b'['];
    for (position, document) in documents.into_iter().enumerate() {
        if position > 0 {
            array.push(b',');
        }
        array.extend_from_slice(document);
    }
    array.push(b']');
    array
}

/// Appends the DICOM JSON object of `object` to `out` (see [`DicomJsonText::of`]).
fn write_data_set(object: &InMemDicomObject, out: &mut Vec<u8>) {
    out.push(b'{');
    let mut first = true;
    for element in object {
        first &= !write_element(element, first, out);
    }
    out.push(b'}');
}

/// Appends `"KEY":` to `out`, after a comma unless the element is the object's first.
fn write_key(tag: Tag, first: bool, out: &mut Vec<u8>) {
    if !first {
        out.push(b',');
    }
    out.push(b'"');
    out.extend_from_slice(&tag_key_digits(tag));
    out.extend_from_slice(b"\":");
}

/// Appends the element as a member of a DICOM JSON object (see [`write_key`]); whether it was
/// written (not when it is bulk data or dicom-json cannot serialize it).
fn write_element(element: &InMemElement, first: bool, out: &mut Vec<u8>) -> bool {
    if is_bulk_data(element) {
        return false;
    }
    let start = out.len();
    write_key(element.tag(), first, out);
    let written = match element.value() {
        Value::Sequence(sequence) => {
            out.extend_from_slice(br#"{"vr":"SQ""#);
            let items = sequence.items();
            if !items.is_empty() {
                out.extend_from_slice(br#","Value":["#);
                for (index, item) in items.iter().enumerate() {
                    if index > 0 {
                        out.push(b',');
                    }
                    write_data_set(item, out);
                }
                out.push(b']');
            }
            out.push(b'}');
            true
        }
        _ => serde_json::to_writer(&mut *out, &dicom_json::DicomJson::from(element)).is_ok(),
    };
    if !written {
        out.truncate(start);
    }
    written
}

/// The search terms of a data set: one per value of each searchable attribute present, and a
/// study-level ModalitiesInStudy term per Modality value.
///
/// A value longer than its value representation allows (see
/// [`crate::attributes::within_length_limit`]) or an attribute with more than
/// [`MAX_SEARCH_VALUES`] values refuses the instance: the work of indexing stays bounded per
/// instance, whatever an instance holds.
pub fn search_terms(object: &InMemDicomObject) -> Result<Vec<SearchTerm>, InstanceError> {
    let mut terms = Vec::new();
    for attribute in searchable_attributes() {
        let source_tag = if attribute.tag == tags::MODALITIES_IN_STUDY {
            tags::MODALITY
        } else {
            attribute.tag
        };
        let Some(element) = object.get(source_tag) else {
            continue;
        };
        let Ok(values) = element.to_multi_str() else {
            continue;
        };
        if values.len() > MAX_SEARCH_VALUES {
            return Err(InstanceError::TooManyValues(attribute.keyword));
        }
        for raw in values.iter() {
            if !within_length_limit(attribute, raw.trim_matches([' ', '\0'])) {
                return Err(InstanceError::ValueTooLong(attribute.keyword));
            }
            let value = match attribute.kind {
                SearchKind::Exact => {
                    let exact = normalize_exact(raw);
                    if exact.is_empty() {
                        continue;
                    }
                    SearchValue::Exact(exact)
                }
                SearchKind::PersonName => {
                    let exact = normalize_person_name(raw);
                    if exact.is_empty() {
                        continue;
                    }
                    SearchValue::PersonName {
                        exact,
                        words: name_words(raw),
                    }
                }
                SearchKind::Date => match parse_date(raw) {
                    Some(date) => SearchValue::Date(date),
                    None => continue,
                },
            };
            let term = SearchTerm { attribute, value };
            if !terms.contains(&term) {
                terms.push(term);
            }
        }
    }
    Ok(terms)
}

#[cfg(test)]
mod tests {
    use dicom_core::value::{DataSetSequence, PrimitiveValue};
    use dicom_core::{DataElement, Length};

    use super::*;

    /// The reference the text is held to: the data set as a `serde_json` tree, built element by
    /// element through `serde_json::to_value`.
    fn data_set_to_json(object: &InMemDicomObject) -> Map<String, JsonValue> {
        object
            .into_iter()
            .filter_map(|element| Some((tag_key(element.tag()), element_to_json(element)?)))
            .collect()
    }

    /// One element as DICOM JSON; `None` for bulk data and for an element dicom-json cannot
    /// serialize.
    fn element_to_json(element: &InMemElement) -> Option<JsonValue> {
        if is_bulk_data(element) {
            return None;
        }
        match element.value() {
            Value::Sequence(sequence) => {
                let items: Vec<JsonValue> = sequence
                    .items()
                    .iter()
                    .map(|item| JsonValue::Object(data_set_to_json(item)))
                    .collect();
                let mut entry = Map::new();
                entry.insert("vr".into(), JsonValue::String("SQ".into()));
                if !items.is_empty() {
                    entry.insert("Value".into(), JsonValue::Array(items));
                }
                Some(JsonValue::Object(entry))
            }
            _ => serde_json::to_value(dicom_json::DicomJson::from(element)).ok(),
        }
    }

    fn element(tag: Tag, vr: VR, value: PrimitiveValue) -> InMemElement {
        DataElement::new(tag, vr, value)
    }

    /// A data set with what the metadata must keep, nest and leave out.
    fn data_set() -> InMemDicomObject {
        let mut item = InMemDicomObject::new_empty();
        item.put(element(tags::CODE_VALUE, VR::SH, "T-A0100".into()));
        item.put(element(
            tags::CODE_MEANING,
            VR::LO,
            PrimitiveValue::from("Brain \"quoted\" \\ \u{e9}"),
        ));
        let mut nested = InMemDicomObject::new_empty();
        nested.put(element(tags::CODE_VALUE, VR::SH, "X".into()));
        item.put(DataElement::new(
            tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
            VR::SQ,
            DataSetSequence::new(vec![nested], Length::UNDEFINED),
        ));
        let mut object = InMemDicomObject::new_empty();
        object.put(element(tags::PATIENT_NAME, VR::PN, "Doe^Jane".into()));
        object.put(element(tags::ROWS, VR::US, PrimitiveValue::from(2_u16)));
        object.put(element(
            tags::SLICE_THICKNESS,
            VR::DS,
            PrimitiveValue::from("2.5"),
        ));
        object.put(element(
            tags::PIXEL_SPACING,
            VR::FD,
            PrimitiveValue::F64([0.5, f64::NAN].into_iter().collect()),
        ));
        object.put(DataElement::new(
            tags::ANATOMIC_REGION_SEQUENCE,
            VR::SQ,
            DataSetSequence::new(vec![item], Length::UNDEFINED),
        ));
        object.put(DataElement::new(
            tags::REFERENCED_IMAGE_SEQUENCE,
            VR::SQ,
            DataSetSequence::new(Vec::<InMemDicomObject>::new(), Length::UNDEFINED),
        ));
        object.put(element(
            Tag(0x0009, 0x1001),
            VR::OB,
            PrimitiveValue::from(vec![7_u8; BULK_DATA_THRESHOLD + 1]),
        ));
        object.put(element(
            Tag(0x0009, 0x1002),
            VR::OB,
            PrimitiveValue::from(vec![1_u8, 2, 3, 4]),
        ));
        object.put(element(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::from(vec![0_u8; 8]),
        ));
        object
    }

    #[test]
    fn metadata_text_is_the_data_sets_json() {
        let object = data_set();
        let text = DicomJsonText::of(&object);
        let parsed = text.to_map().expect("the text is a JSON object");
        assert_eq!(parsed, data_set_to_json(&object));
        // In tag order, bulk data and pixel data left out.
        let keys: Vec<&str> = parsed.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "00081140", "00082218", "00091002", "00100010", "00180050", "00280010", "00280030"
            ]
        );
        // Sequences nested, an empty one without a value.
        assert_eq!(parsed["00081140"], serde_json::json!({ "vr": "SQ" }));
        assert_eq!(
            parsed["00082218"]["Value"][0]["0040A170"]["Value"][0]["00080100"]["Value"][0],
            "X"
        );
        assert_eq!(
            parsed["00082218"]["Value"][0]["00080104"]["Value"][0],
            "Brain \"quoted\" \\ \u{e9}"
        );
        assert_eq!(parsed["00091002"]["InlineBinary"], "AQIDBA==");
        assert!(
            text.as_str()
                .starts_with(r#"{"00081140":{"vr":"SQ"},"00082218":"#)
        );
    }

    #[test]
    fn level_text_holds_the_levels_elements_then_the_one_from_outside() {
        let object = data_set();
        let all = data_set_to_json(&object);
        let study = DicomJsonText::of_level(&object, QueryLevel::Study, None);
        let study = study.to_map().expect("an object");
        assert_eq!(study.get("00100010"), all.get("00100010"));
        assert!(study.keys().all(|key| all.get(key) == study.get(key)));
        assert!(!study.contains_key("00280010"));
        let syntax = serde_json::json!({ "vr": "UI", "Value": ["1.2.840.10008.1.2.1"] });
        let instance = DicomJsonText::of_level(
            &object,
            QueryLevel::Instance,
            Some((tags::TRANSFER_SYNTAX_UID, &syntax)),
        );
        let instance = instance.to_map().expect("an object");
        assert_eq!(instance.get("00280010"), all.get("00280010"));
        assert!(!instance.contains_key("7FE00010"));
        assert_eq!(
            instance.iter().next_back(),
            Some((&"00020010".to_owned(), &syntax))
        );
        // Nothing at a level: an empty object, or the one element from outside alone.
        let empty = InMemDicomObject::new_empty();
        let nothing = DicomJsonText::of_level(&empty, QueryLevel::Series, None);
        assert_eq!(nothing.as_str(), "{}");
        let alone = DicomJsonText::of_level(
            &empty,
            QueryLevel::Instance,
            Some((tags::TRANSFER_SYNTAX_UID, &syntax)),
        );
        assert_eq!(
            alone.as_str(),
            r#"{"00020010":{"vr":"UI","Value":["1.2.840.10008.1.2.1"]}}"#
        );
    }

    #[test]
    fn tag_keys_are_eight_upper_case_hex_digits() {
        assert_eq!(tag_key(tags::PATIENT_NAME), "00100010");
        assert_eq!(tag_key(Tag(0x7FE0, 0x0010)), "7FE00010");
        assert_eq!(tag_key(Tag(0xABCD, 0xEF09)), "ABCDEF09");
        assert_eq!(tag_key(Tag(0xFFFF, 0xFFFF)), "FFFFFFFF");
        assert_eq!(tag_key(Tag(0, 0)), "00000000");
    }

    #[test]
    fn json_documents_join_into_one_array_as_they_are() {
        assert_eq!(json_array([]), b"[]");
        assert_eq!(json_array([&b"{}"[..]]), b"[{}]");
        assert_eq!(json_array([&b"{\"a\":1}"[..], b"{}"]), b"[{\"a\":1},{}]");
    }

    #[test]
    fn metadata_of_an_empty_data_set_is_an_empty_object() {
        let text = DicomJsonText::of(&InMemDicomObject::new_empty());
        assert_eq!(text.as_str(), "{}");
    }
}
