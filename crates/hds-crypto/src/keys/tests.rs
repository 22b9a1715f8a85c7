use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};

use super::*;

const SERVICE: &str = "workspace-a/dicom-a";

/// Drives a future that completes without waiting (every [`LocalRsaKek`] future does).
fn run_ready<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("future was expected to be ready"),
    }
}

/// RSA key generation is slow without optimizations; share one key across tests.
fn shared_kek() -> &'static LocalRsaKek {
    static KEK: OnceLock<LocalRsaKek> = OnceLock::new();
    KEK.get_or_init(|| {
        LocalRsaKek::generate("https://vault-a.example/keys/cmk/v1", RsaKeySize::Rsa2048)
            .expect("generate RSA key")
    })
}

fn same_key_material(first: &DataKey, second: &DataKey) -> bool {
    first.expose() == second.expose()
}

#[test]
fn generated_data_keys_are_random_and_redacted() {
    let first = DataKey::generate();
    let second = DataKey::generate();
    assert!(!same_key_material(&first, &second));
    assert_ne!(first.expose(), &[0u8; DATA_KEY_LEN]);
    assert_eq!(format!("{first:?}"), "DataKey(<redacted>)");
    assert_eq!(format!("{:?}", BlobKey::generate()), "BlobKey(<redacted>)");
}

#[test]
fn study_key_wrap_round_trips_and_is_bound_to_service_and_study() {
    let root_key = ServiceRootKey::generate();
    let study_key = StudyKey::generate();
    let wrapped = root_key.wrap_study_key(SERVICE, b"study-token-1", &study_key);
    assert_eq!(wrapped.len(), WRAPPED_DATA_KEY_LEN);
    assert!(
        !wrapped
            .windows(DATA_KEY_LEN)
            .any(|window| window == study_key.expose())
    );

    let unwrapped = root_key
        .unwrap_study_key(SERVICE, b"study-token-1", &wrapped)
        .expect("unwrap");
    assert!(same_key_material(&unwrapped.data_key, &study_key.data_key));

    assert_eq!(
        root_key
            .unwrap_study_key(SERVICE, b"study-token-2", &wrapped)
            .map(|_| ()),
        Err(KeyError::Integrity)
    );
    assert_eq!(
        root_key
            .unwrap_study_key("workspace-a/dicom-b", b"study-token-1", &wrapped)
            .map(|_| ()),
        Err(KeyError::Integrity)
    );
    assert_eq!(
        ServiceRootKey::generate()
            .unwrap_study_key(SERVICE, b"study-token-1", &wrapped)
            .map(|_| ()),
        Err(KeyError::Integrity)
    );
}

fn instance<'a>(blob_name: &'a str, series: &'a str, sop: &'a str) -> InstanceBinding<'a> {
    InstanceBinding {
        blob_name,
        study_instance_uid: "1.2.3",
        series_instance_uid: series,
        sop_instance_uid: sop,
    }
}

#[test]
fn blob_key_wrap_round_trips_and_is_bound_to_its_instance() {
    let study_key = StudyKey::generate();
    let blob_key = BlobKey::generate();
    let owner = instance("blob-1", "1.2.3.4", "1.2.3.4.5");
    let wrapped = study_key.wrap_blob_key(SERVICE, &owner, &blob_key);
    let unwrapped = study_key
        .unwrap_blob_key(SERVICE, &owner, &wrapped)
        .expect("unwrap");
    assert!(same_key_material(&unwrapped.data_key, &blob_key.data_key));
    // Any other blob name, study, series, SOP instance or service: refused.
    let others = [
        instance("blob-2", "1.2.3.4", "1.2.3.4.5"),
        instance("blob-1", "1.2.3.4", "1.2.3.4.6"),
        instance("blob-1", "1.2.3.5", "1.2.3.4.5"),
        InstanceBinding {
            study_instance_uid: "1.2.4",
            ..owner
        },
        // Length prefixes keep the parts apart: moving a character across a boundary differs.
        instance("blob-1", "1.2.3.41", ".2.3.4.5"),
    ];
    for other in &others {
        assert_eq!(
            study_key
                .unwrap_blob_key(SERVICE, other, &wrapped)
                .map(|_| ()),
            Err(KeyError::Integrity),
            "{other:?}"
        );
    }
    assert_eq!(
        study_key
            .unwrap_blob_key("other/service", &owner, &wrapped)
            .map(|_| ()),
        Err(KeyError::Integrity)
    );
    // A study key's wrapping cannot be confused with a root key's wrapping of the same bytes.
    let root_key =
        ServiceRootKey::from_data_key(DataKey::from_bytes(Zeroizing::new(*study_key.expose())));
    assert!(
        root_key
            .unwrap_study_key(SERVICE, b"blob-1", &wrapped)
            .is_err()
    );
}

/// What builds before instance binding wrote: version 1, bound to the service and blob name.
fn legacy_wrap_blob_key(study_key: &StudyKey, blob_name: &str, blob_key: &BlobKey) -> Vec<u8> {
    let wrapping_key = aes_gcm_key(derive_key(study_key.expose(), BLOB_WRAPPING_INFO).as_slice());
    let binding = wrapping_binding(b"blob-key", SERVICE, blob_name.as_bytes());
    wrap_data_key(&wrapping_key, &binding, &blob_key.data_key)
}

#[test]
fn blob_keys_of_earlier_builds_still_open_and_new_ones_never_open_as_them() {
    let study_key = StudyKey::generate();
    let blob_key = BlobKey::generate();
    let owner = instance("blob-1", "1.2.3.4", "1.2.3.4.5");
    let legacy = legacy_wrap_blob_key(&study_key, "blob-1", &blob_key);
    let unwrapped = study_key
        .unwrap_blob_key(SERVICE, &owner, &legacy)
        .expect("a version-1 blob key opens");
    assert!(same_key_material(&unwrapped.data_key, &blob_key.data_key));
    assert_eq!(
        study_key
            .unwrap_blob_key(
                SERVICE,
                &instance("blob-2", "1.2.3.4", "1.2.3.4.5"),
                &legacy
            )
            .map(|_| ()),
        Err(KeyError::Integrity)
    );
    // Relabelling a version-2 key as version 1 (to escape the instance binding) fails.
    let mut downgraded = study_key.wrap_blob_key(SERVICE, &owner, &blob_key);
    downgraded[0] = 1;
    assert_eq!(
        study_key
            .unwrap_blob_key(SERVICE, &owner, &downgraded)
            .map(|_| ()),
        Err(KeyError::Integrity)
    );
}

#[test]
fn altered_wrapped_keys_fail() {
    let study_key = StudyKey::generate();
    let owner = instance("blob-1", "1.2.3.4", "1.2.3.4.5");
    let wrapped = study_key.wrap_blob_key(SERVICE, &owner, &BlobKey::generate());
    for index in 1..wrapped.len() {
        let mut altered = wrapped.clone();
        altered[index] ^= 0x04;
        assert_eq!(
            study_key
                .unwrap_blob_key(SERVICE, &owner, &altered)
                .map(|_| ()),
            Err(KeyError::Integrity),
            "byte {index}"
        );
    }
    let mut other_version = wrapped.clone();
    other_version[0] = 3;
    assert_eq!(
        study_key
            .unwrap_blob_key(SERVICE, &owner, &other_version)
            .map(|_| ()),
        Err(KeyError::UnsupportedVersion(3))
    );
    assert_eq!(
        study_key
            .unwrap_blob_key(SERVICE, &owner, &wrapped[..wrapped.len() - 1])
            .map(|_| ()),
        Err(KeyError::Integrity)
    );
    assert_eq!(
        study_key.unwrap_blob_key(SERVICE, &owner, &[]).map(|_| ()),
        Err(KeyError::Integrity)
    );
}

#[test]
fn index_keys_are_deterministic_per_service_root_key() {
    let root_key = ServiceRootKey::generate();
    let first = root_key.index_keys();
    let second = IndexKeys::derive(&root_key);
    assert_eq!(
        first.token("PatientID", b"12345"),
        second.token("PatientID", b"12345")
    );
    let other = ServiceRootKey::generate().index_keys();
    assert_ne!(
        first.token("PatientID", b"12345"),
        other.token("PatientID", b"12345")
    );
    // A value sealed under one derivation opens under the other.
    let sealed = first.seal_value(b"row-1/PatientID", b"12345");
    assert_eq!(
        second
            .open_value(b"row-1/PatientID", &sealed)
            .expect("open")
            .as_slice(),
        b"12345"
    );
}

#[test]
fn blind_tokens_separate_domains_and_values() {
    let index_keys = ServiceRootKey::generate().index_keys();
    let token = index_keys.token("PatientID", b"12345");
    assert_ne!(token, index_keys.token("PatientID", b"12346"));
    assert_ne!(token, index_keys.token("AccessionNumber", b"12345"));
    // Length prefixes: moving a byte between domain and value changes the token.
    assert_ne!(index_keys.token("ab", b"c"), index_keys.token("a", b"bc"));
    assert_ne!(token, [0u8; 32]);
}

#[test]
fn blind_token_is_hmac_sha256_over_length_prefixed_fields() {
    let root_key = ServiceRootKey::from_data_key(DataKey::from_bytes(Zeroizing::new([0x11; 32])));
    let index_keys = root_key.index_keys();
    let token_key = derive_key(root_key.expose(), INDEX_TOKEN_INFO);
    let mut message = Vec::new();
    message.extend_from_slice(&9u64.to_be_bytes());
    message.extend_from_slice(b"PatientID");
    message.extend_from_slice(&5u64.to_be_bytes());
    message.extend_from_slice(b"12345");
    let expected = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, token_key.as_slice()),
        &message,
    );
    assert_eq!(
        index_keys.token("PatientID", b"12345").as_slice(),
        expected.as_ref()
    );
}

#[test]
fn index_values_round_trip_and_are_bound() {
    let index_keys = ServiceRootKey::generate().index_keys();
    let marker = b"DOE^JANE-MARKER";
    let sealed = index_keys.seal_value(b"svc/row-7/PatientName", marker);
    assert_eq!(sealed.len(), SEALED_VALUE_OVERHEAD + marker.len());
    assert!(!sealed.windows(marker.len()).any(|window| window == marker));
    assert_ne!(
        sealed,
        index_keys.seal_value(b"svc/row-7/PatientName", marker)
    );
    assert_eq!(
        index_keys
            .open_value(b"svc/row-7/PatientName", &sealed)
            .expect("open")
            .as_slice(),
        marker
    );
    assert_eq!(
        index_keys
            .open_value(b"svc/row-8/PatientName", &sealed)
            .map(|_| ()),
        Err(KeyError::Integrity)
    );
    for index in 1..sealed.len() {
        let mut altered = sealed.clone();
        altered[index] ^= 0x20;
        assert_eq!(
            index_keys
                .open_value(b"svc/row-7/PatientName", &altered)
                .map(|_| ()),
            Err(KeyError::Integrity),
            "byte {index}"
        );
    }
    assert_eq!(
        index_keys
            .open_value(
                b"svc/row-7/PatientName",
                &sealed[..SEALED_VALUE_OVERHEAD - 1]
            )
            .map(|_| ()),
        Err(KeyError::Integrity)
    );
    let empty = index_keys.seal_value(b"b", b"");
    assert!(
        index_keys
            .open_value(b"b", &empty)
            .expect("open empty")
            .is_empty()
    );
}

#[test]
fn service_root_key_wraps_under_the_kek_and_back() {
    let kek = shared_kek();
    let root_key = ServiceRootKey::generate();
    let wrapped = run_ready(root_key.wrap_with(kek)).expect("wrap");
    assert_eq!(wrapped.kid, kek.key_id());
    assert_eq!(wrapped.algorithm, RSA_OAEP_256);
    assert_eq!(wrapped.ciphertext.len(), 256);
    let unwrapped = run_ready(ServiceRootKey::unwrap_with(kek, &wrapped)).expect("unwrap");
    assert!(same_key_material(&unwrapped.data_key, &root_key.data_key));
    // OAEP is randomized.
    assert_ne!(
        run_ready(root_key.wrap_with(kek)).expect("wrap").ciphertext,
        wrapped.ciphertext
    );
}

#[test]
fn kek_is_usable_as_a_trait_object() {
    let kek: &dyn KeyEncryptionKey = shared_kek();
    let wrapped = run_ready(kek.wrap_key(b"0123456789abcdef0123456789abcdef")).expect("wrap");
    let unwrapped = run_ready(kek.unwrap_key(&wrapped)).expect("unwrap");
    assert_eq!(unwrapped.as_slice(), b"0123456789abcdef0123456789abcdef");
}

#[test]
fn kek_refuses_foreign_altered_or_unknown_wraps() {
    let kek = shared_kek();
    let wrapped = kek.wrap_key_now(&[5u8; 32]).expect("wrap");

    let mut other_kid = wrapped.clone();
    other_kid.kid = "https://vault-a.example/keys/cmk/v2".to_owned();
    assert_eq!(
        kek.unwrap_key_now(&other_kid).map(|_| ()),
        Err(KekError::WrongKey)
    );

    let mut altered = wrapped.clone();
    altered.ciphertext[100] ^= 1;
    assert_eq!(
        kek.unwrap_key_now(&altered).map(|_| ()),
        Err(KekError::UnwrapFailed)
    );

    // Unwrapping with the wrong OAEP hash fails rather than returning garbage.
    let mut wrong_algorithm = wrapped.clone();
    wrong_algorithm.algorithm = RSA_OAEP.to_owned();
    assert_eq!(
        kek.unwrap_key_now(&wrong_algorithm).map(|_| ()),
        Err(KekError::UnwrapFailed)
    );

    let mut unknown = wrapped.clone();
    unknown.algorithm = "RSA1_5".to_owned();
    assert_eq!(
        kek.unwrap_key_now(&unknown).map(|_| ()),
        Err(KekError::UnsupportedAlgorithm("RSA1_5".to_owned()))
    );
}

#[test]
fn unwrap_with_rejects_a_key_of_the_wrong_length() {
    let kek = shared_kek();
    let wrapped = kek.wrap_key_now(&[5u8; 16]).expect("wrap");
    assert!(matches!(
        run_ready(ServiceRootKey::unwrap_with(kek, &wrapped)),
        Err(KekError::UnwrapFailed)
    ));
}

#[test]
fn kek_survives_a_pkcs8_round_trip_and_supports_rsa_oaep() {
    let kek = shared_kek();
    let pkcs8 = kek.to_pkcs8().expect("export");
    let reloaded = LocalRsaKek::from_pkcs8(kek.key_id(), &pkcs8)
        .expect("import")
        .with_wrap_algorithm(RSA_OAEP)
        .expect("algorithm");
    assert_eq!(reloaded.key_size_bits(), 2048);
    assert_eq!(
        reloaded.public_key_der().expect("der"),
        kek.public_key_der().expect("der")
    );
    let wrapped = reloaded.wrap_key_now(&[9u8; 32]).expect("wrap");
    assert_eq!(wrapped.algorithm, RSA_OAEP);
    // The original object unwraps: same key, algorithm taken from the wrapped key.
    assert_eq!(
        kek.unwrap_key_now(&wrapped).expect("unwrap").as_slice(),
        &[9u8; 32]
    );
    assert!(LocalRsaKek::from_pkcs8("k", b"not a key").is_err());
    assert!(matches!(
        LocalRsaKek::from_pkcs8("k", &pkcs8).and_then(|kek| kek.with_wrap_algorithm("A256KW")),
        Err(KekError::UnsupportedAlgorithm(_))
    ));
}

#[test]
fn kek_rotation_rewraps_without_touching_data() {
    let old_kek = shared_kek();
    let new_kek = LocalRsaKek::from_pkcs8(
        "https://vault-a.example/keys/cmk/v2",
        &old_kek.to_pkcs8().expect("export"),
    )
    .expect("import");
    let root_key = ServiceRootKey::generate();
    let study_key = StudyKey::generate();
    let wrapped_study = root_key.wrap_study_key(SERVICE, b"study", &study_key);
    let wrapped_root = run_ready(root_key.wrap_with(old_kek)).expect("wrap");

    let unwrapped_root =
        run_ready(ServiceRootKey::unwrap_with(old_kek, &wrapped_root)).expect("unwrap old");
    let rewrapped = run_ready(unwrapped_root.wrap_with(&new_kek)).expect("wrap new");
    assert_eq!(rewrapped.kid, "https://vault-a.example/keys/cmk/v2");

    let root_after_rotation =
        run_ready(ServiceRootKey::unwrap_with(&new_kek, &rewrapped)).expect("unwrap new");
    let study_after_rotation = root_after_rotation
        .unwrap_study_key(SERVICE, b"study", &wrapped_study)
        .expect("study key still unwraps");
    assert!(same_key_material(
        &study_after_rotation.data_key,
        &study_key.data_key
    ));
}

#[test]
fn debug_output_never_shows_key_bytes() {
    let kek = shared_kek();
    let wrapped = kek.wrap_key_now(&[1u8; 32]).expect("wrap");
    let rendered = format!(
        "{wrapped:?} {kek:?} {:?}",
        ServiceRootKey::generate().index_keys()
    );
    assert!(rendered.contains("ciphertext_len: 256"));
    assert!(!rendered.contains("ciphertext: ["));
}

#[test]
fn key_types_can_be_shared_across_threads() {
    fn assert_send_and_sync<T: Send + Sync>() {}
    assert_send_and_sync::<ServiceRootKey>();
    assert_send_and_sync::<StudyKey>();
    assert_send_and_sync::<BlobKey>();
    assert_send_and_sync::<IndexKeys>();
    assert_send_and_sync::<LocalRsaKek>();
    assert_send_and_sync::<std::sync::Arc<dyn KeyEncryptionKey>>();
}
