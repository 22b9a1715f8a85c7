fn main() {
    let p = std::env::args().nth(1).unwrap();
    let o = dicom_object::OpenFileOptions::new().read_until(dicom_dictionary_std::tags::PIXEL_DATA).open_file(&p).unwrap();
    let e = o.get(dicom_dictionary_std::tags::STUDY_INSTANCE_UID).unwrap();
    println!("{:?} {:?}", e.vr(), e.value());
    println!("{:?}", e.to_str());
}
