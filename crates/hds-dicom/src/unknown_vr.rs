//! Reinterpretation of standard attributes that a file stores with VR UN.
//!
//! Some writers store standard attributes as UN in explicit VR transfer syntaxes (the value is
//! then the raw bytes of the attribute's real encoding). Reading them as the dictionary says
//! keeps UIDs valid, names searchable and the metadata faithful, as other DICOM toolkits do.

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
use dicom_core::header::Header;
use dicom_core::value::{DataSetSequence, PrimitiveValue, Value};
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::{StandardDataDictionary, tags};
use dicom_encoding::text::{SpecificCharacterSet, TextCodec};
use dicom_object::mem::{InMemDicomObject, InMemElement};

/// How the bytes of UN values are to be read.
#[derive(Clone)]
pub(crate) struct UnknownVrContext {
    pub(crate) charset: SpecificCharacterSet,
    pub(crate) big_endian: bool,
}

impl UnknownVrContext {
    /// The context of a data set: its Specific Character Set (the first code that dicom-rs
    /// knows; the default repertoire otherwise) and the byte order of its transfer syntax.
    pub(crate) fn of(object: &InMemDicomObject, big_endian: bool) -> Self {
        let charset = object
            .get(tags::SPECIFIC_CHARACTER_SET)
            .and_then(|element| element.to_multi_str().ok())
            .and_then(|codes| {
                codes
                    .iter()
                    .map(|code| code.trim())
                    .filter(|code| !code.is_empty())
                    .find_map(SpecificCharacterSet::from_code)
            })
            .unwrap_or_default();
        UnknownVrContext {
            charset,
            big_endian,
        }
    }
}

/// Returns the data set with every standard attribute stored as UN re-read with its dictionary
/// VR, in items of sequences too. Values that cannot be re-read stay UN.
pub(crate) fn reinterpret_unknown_vrs(
    object: InMemDicomObject,
    context: &UnknownVrContext,
) -> InMemDicomObject {
    let elements: Vec<InMemElement> = object
        .into_iter()
        .map(|element| reinterpret_element(element, context))
        .collect();
    InMemDicomObject::from_element_iter(elements)
}

fn reinterpret_element(element: InMemElement, context: &UnknownVrContext) -> InMemElement {
    let tag = element.tag();
    let vr = element.vr();
    match element.into_value() {
        Value::Sequence(sequence) => {
            let length = sequence.length();
            let items: Vec<InMemDicomObject> = sequence
                .into_items()
                .into_iter()
                .map(|item| reinterpret_unknown_vrs(item, context))
                .collect();
            DataElement::new(tag, vr, DataSetSequence::new(items, length))
        }
        Value::Primitive(PrimitiveValue::U8(bytes)) if vr == VR::UN => {
            match dictionary_vr(tag).and_then(|real| Some((real, decode(real, &bytes, context)?))) {
                Some((real, value)) => DataElement::new(tag, real, value),
                None => DataElement::new(tag, vr, PrimitiveValue::U8(bytes)),
            }
        }
        value => DataElement::new(tag, vr, value),
    }
}

fn dictionary_vr(tag: dicom_core::Tag) -> Option<VR> {
    // Private attributes have no dictionary entry to go by.
    if tag.group() % 2 == 1 {
        return None;
    }
    match StandardDataDictionary.by_tag(tag)?.vr() {
        VirtualVr::Exact(vr) => Some(vr),
        _ => None,
    }
}

fn decode(vr: VR, bytes: &[u8], context: &UnknownVrContext) -> Option<PrimitiveValue> {
    match vr {
        VR::AE | VR::AS | VR::CS | VR::DA | VR::DS | VR::DT | VR::IS | VR::TM | VR::UI => {
            let text = std::str::from_utf8(bytes).ok()?;
            Some(strings(text, true))
        }
        VR::LO | VR::PN | VR::SH | VR::UC => {
            let text = context.charset.decode(bytes).ok()?;
            Some(strings(&text, true))
        }
        VR::LT | VR::ST | VR::UT | VR::UR => {
            let text = context.charset.decode(bytes).ok()?;
            Some(strings(&text, false))
        }
        VR::US => numbers(bytes, context, u16::from_le_bytes, u16::from_be_bytes)
            .map(|values| PrimitiveValue::U16(values.into())),
        VR::SS => numbers(bytes, context, i16::from_le_bytes, i16::from_be_bytes)
            .map(|values| PrimitiveValue::I16(values.into())),
        VR::UL => numbers(bytes, context, u32::from_le_bytes, u32::from_be_bytes)
            .map(|values| PrimitiveValue::U32(values.into())),
        VR::SL => numbers(bytes, context, i32::from_le_bytes, i32::from_be_bytes)
            .map(|values| PrimitiveValue::I32(values.into())),
        VR::FL => numbers(bytes, context, f32::from_le_bytes, f32::from_be_bytes)
            .map(|values| PrimitiveValue::F32(values.into())),
        VR::FD => numbers(bytes, context, f64::from_le_bytes, f64::from_be_bytes)
            .map(|values| PrimitiveValue::F64(values.into())),
        VR::OB => Some(PrimitiveValue::U8(bytes.into())),
        _ => None,
    }
}

/// Text values without their padding, split on `\` when the VR allows several values.
fn strings(text: &str, multi_valued: bool) -> PrimitiveValue {
    let text = text.trim_end_matches(['\0', ' ']);
    let values: Vec<String> = if multi_valued {
        text.split('\\').map(str::to_string).collect()
    } else {
        vec![text.to_string()]
    };
    PrimitiveValue::Strs(values.into())
}

fn numbers<T, const N: usize>(
    bytes: &[u8],
    context: &UnknownVrContext,
    little: fn([u8; N]) -> T,
    big: fn([u8; N]) -> T,
) -> Option<Vec<T>> {
    if !bytes.len().is_multiple_of(N) {
        return None;
    }
    let values = bytes
        .chunks_exact(N)
        .map(|chunk| {
            let mut array = [0u8; N];
            array.copy_from_slice(chunk);
            if context.big_endian {
                big(array)
            } else {
                little(array)
            }
        })
        .collect();
    Some(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> UnknownVrContext {
        UnknownVrContext {
            charset: SpecificCharacterSet::default(),
            big_endian: false,
        }
    }

    #[test]
    fn standard_attributes_stored_as_un_are_reread() {
        let object = InMemDicomObject::from_element_iter([
            DataElement::new(
                tags::STUDY_INSTANCE_UID,
                VR::UN,
                PrimitiveValue::U8(b"1.2.3\0".as_slice().into()),
            ),
            DataElement::new(
                tags::ROWS,
                VR::UN,
                PrimitiveValue::U8([0x00, 0x02].as_slice().into()),
            ),
            DataElement::new(
                tags::IMAGE_TYPE,
                VR::UN,
                PrimitiveValue::U8(b"ORIGINAL\\PRIMARY".as_slice().into()),
            ),
            DataElement::new(
                dicom_core::Tag(0x0009, 0x0010),
                VR::UN,
                PrimitiveValue::U8(b"ACME".as_slice().into()),
            ),
        ]);
        let object = reinterpret_unknown_vrs(object, &context());
        let uid = object.get(tags::STUDY_INSTANCE_UID).expect("uid");
        assert_eq!(uid.vr(), VR::UI);
        assert_eq!(uid.to_str().expect("text"), "1.2.3");
        let rows = object.get(tags::ROWS).expect("rows");
        assert_eq!(rows.vr(), VR::US);
        assert_eq!(rows.to_int::<u32>().expect("number"), 512);
        let image_type = object.get(tags::IMAGE_TYPE).expect("image type");
        assert_eq!(
            image_type.to_multi_str().expect("strings").to_vec(),
            vec!["ORIGINAL".to_string(), "PRIMARY".to_string()]
        );
        let private = object
            .get(dicom_core::Tag(0x0009, 0x0010))
            .expect("private");
        assert_eq!(private.vr(), VR::UN);
    }

    #[test]
    fn odd_sized_numbers_stay_unknown() {
        let object = InMemDicomObject::from_element_iter([DataElement::new(
            tags::ROWS,
            VR::UN,
            PrimitiveValue::U8([0x00, 0x02, 0x01].as_slice().into()),
        )]);
        let object = reinterpret_unknown_vrs(object, &context());
        assert_eq!(object.get(tags::ROWS).expect("rows").vr(), VR::UN);
    }
}
