fn main() {
    for p in std::env::args().skip(1) {
        let t = std::time::Instant::now();
        let r = hds_dicom::parse_instance(std::fs::File::open(&p).unwrap());
        let el = t.elapsed();
        if el.as_millis() > 100 { println!("{:?} {} {:?}", el, p, r.as_ref().map(|x| x.frames.as_ref().map(|f| f.frames.len())).map_err(|e| e.to_string())); }
    }
}
