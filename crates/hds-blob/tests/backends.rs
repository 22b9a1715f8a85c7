//! One suite, three backends: every case runs against local files, Azurite (Microsoft's Azure
//! Storage emulator) and a real S3 server (`s3s-fs`), each started here on a free loopback port.
//!
//! A server that is not installed skips its backend with a printed reason, unless its variable
//! says it is required (`HDS_TEST_AZURITE=1`, `HDS_TEST_S3=1`, set by `scripts/test`): then its
//! absence fails the test. The servers are found at `HDS_AZURITE_BLOB` and `HDS_S3S_FS`, else in
//! `~/.cache/hds-ci` where `scripts/object-stores` installs them.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::TryStreamExt;
use hds_blob::{BlobError, BlobName, BlobStore, RemoteLocation, SHARD_COUNT};
use hds_crypto::keys::BlobKey;

/// Azurite's well-known development account and key (public, documented by Microsoft).
const AZURITE_ACCOUNT: &str = "devstoreaccount1";
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const S3_ACCESS_KEY: &str = "hds-test";
const S3_SECRET_KEY: &str = "hds-test-secret";
const SERVICE: &str = "default/dicom";
/// How long a server may take to start listening.
const START_DEADLINE: Duration = Duration::from_secs(120);

#[tokio::test]
async fn local_files() {
    let directory = tempfile::tempdir().expect("temp dir");
    let store = BlobStore::local(directory.path()).expect("store");
    suite(&store, "local").await;
}

#[tokio::test]
async fn azurite() {
    let Some(server) = Server::start(Backend::Azurite) else {
        return;
    };
    create_azurite_container(server.address, "blobs").await;
    let location = RemoteLocation::parse("az://blobs/hds").expect("url");
    let store = BlobStore::open_remote_with(&location, server.environment()).expect("store");
    store.check_access().await.expect("access");
    suite(&store, "azurite").await;

    let missing = RemoteLocation::parse("az://no-such-container").expect("url");
    let store = BlobStore::open_remote_with(&missing, server.environment()).expect("store");
    assert!(
        store.check_access().await.is_err(),
        "a missing container fails the startup check"
    );
    let mut wrong_key = server.environment();
    wrong_key.push((
        "AZURE_STORAGE_ACCOUNT_KEY".to_owned(),
        "d3Jvbmcta2V5LXdyb25nLWtleQ==".to_owned(),
    ));
    let store = BlobStore::open_remote_with(&location, wrong_key).expect("store");
    assert!(
        store.check_access().await.is_err(),
        "a wrong key fails the startup check"
    );
}

#[tokio::test]
async fn s3() {
    let Some(server) = Server::start(Backend::S3) else {
        return;
    };
    let location = RemoteLocation::parse("s3://blobs/hds").expect("url");
    let store = BlobStore::open_remote_with(&location, server.environment()).expect("store");
    store.check_access().await.expect("access");
    suite(&store, "s3").await;

    let missing = RemoteLocation::parse("s3://no-such-bucket").expect("url");
    let store = BlobStore::open_remote_with(&missing, server.environment()).expect("store");
    assert!(
        store.check_access().await.is_err(),
        "a missing bucket fails the startup check"
    );
    let mut wrong_key = server.environment();
    wrong_key.retain(|(name, _)| name != "AWS_SECRET_ACCESS_KEY");
    wrong_key.push(("AWS_SECRET_ACCESS_KEY".to_owned(), "wrong".to_owned()));
    let store = BlobStore::open_remote_with(&location, wrong_key).expect("store");
    assert!(
        store.check_access().await.is_err(),
        "a wrong key fails the startup check"
    );
}

/// Every case, in order, on one store.
async fn suite(store: &BlobStore, backend: &str) {
    eprintln!("{backend}: blob store suite");
    multipart_writes_read_back_whole_and_in_ranges(store).await;
    sealed_blobs_round_trip_in_ranges_and_hold_no_plaintext(store).await;
    aborted_and_dropped_writes_leave_no_blob(store).await;
    listings_name_settled_blobs_by_shard(store).await;
    missing_blobs_are_not_found(store).await;
}

fn pattern(length: usize, seed: u8) -> Vec<u8> {
    (0..length)
        .map(|position| (position % 251) as u8 ^ seed)
        .collect()
}

async fn read_all(store: &BlobStore, name: &BlobName) -> Vec<u8> {
    let chunks: Vec<Bytes> = store
        .read(name)
        .await
        .expect("read")
        .try_collect()
        .await
        .expect("chunks");
    chunks.concat()
}

async fn multipart_writes_read_back_whole_and_in_ranges(store: &BlobStore) {
    // 20 MB in 1 MiB writes: three parts of a multipart upload on an object store.
    let contents = pattern(20_000_000, 0x11);
    let name = BlobName::random();
    let mut writer = store.create(&name).await.expect("create");
    for chunk in contents.chunks(1 << 20) {
        writer.write(chunk).await.expect("write");
    }
    writer.finish().await.expect("finish");
    assert_eq!(read_all(store, &name).await, contents);
    let range = store
        .read_range(&name, 9_999_990..10_000_010)
        .await
        .expect("range");
    assert_eq!(&range[..], &contents[9_999_990..10_000_010]);
    let small = store
        .put(&BlobName::random(), Bytes::from_static(b"small"))
        .await
        .expect("put");
    assert_eq!(read_all(store, &small).await, b"small");
    for name in [&name, &small] {
        store.delete(name).await.expect("delete");
        assert!(matches!(store.read(name).await, Err(BlobError::NotFound)));
        store
            .delete(name)
            .await
            .expect("deleting a missing blob succeeds");
    }
}

async fn sealed_blobs_round_trip_in_ranges_and_hold_no_plaintext(store: &BlobStore) {
    let key = BlobKey::generate();
    // One blob under the one-put threshold and one that streams as a multipart upload.
    for length in [300_000usize, 9_500_000] {
        let plaintext = pattern(length, 0x5a);
        let name = BlobName::random();
        let mut writer = store
            .create_sealed(&name, SERVICE, &key)
            .await
            .expect("create");
        for chunk in plaintext.chunks(777_777) {
            writer.write(chunk).await.expect("write");
        }
        let name = writer.finish().await.expect("finish");

        let chunks: Vec<Bytes> = store
            .read_sealed(&name, SERVICE, &key)
            .await
            .expect("open")
            .try_collect()
            .await
            .expect("segments");
        assert_eq!(chunks.concat(), plaintext, "{length} bytes round trip");

        let ranges = store
            .open_sealed_ranges(&name, SERVICE, &key, length as u64)
            .await
            .expect("ranges");
        let wanted = [
            0..10,
            (length as u64 / 2)..(length as u64 / 2 + 70_000),
            (length as u64 - 5)..length as u64,
        ];
        let pieces = ranges.read(&wanted).await.expect("read ranges");
        for (range, piece) in wanted.iter().zip(pieces) {
            assert_eq!(
                &piece[..],
                &plaintext[range.start as usize..range.end as usize]
            );
        }

        // What the store holds is ciphertext: no 64-byte window of the plaintext appears.
        let stored = read_all(store, &name).await;
        assert!(
            stored.len() > length,
            "sealed blobs carry a header and tags"
        );
        let needle = &plaintext[1000..1064];
        assert!(
            !stored.windows(needle.len()).any(|window| window == needle),
            "plaintext found in the stored blob"
        );
        let other_key = BlobKey::generate();
        assert!(
            store.read_sealed(&name, SERVICE, &other_key).await.is_err(),
            "the wrong key does not open it"
        );
        store.delete(&name).await.expect("delete");
    }
}

async fn aborted_and_dropped_writes_leave_no_blob(store: &BlobStore) {
    let aborted = BlobName::random();
    let mut writer = store.create(&aborted).await.expect("create");
    writer.write(&pattern(9_000_000, 1)).await.expect("write");
    writer.abort().await.expect("abort");
    assert!(matches!(
        store.read(&aborted).await,
        Err(BlobError::NotFound)
    ));

    let dropped = BlobName::random();
    let mut writer = store.create(&dropped).await.expect("create");
    writer.write(b"partial").await.expect("write");
    drop(writer);
    assert!(matches!(
        store.read(&dropped).await,
        Err(BlobError::NotFound)
    ));
}

async fn listings_name_settled_blobs_by_shard(store: &BlobStore) {
    // Small blobs (in packs on local files) and larger ones (files or objects everywhere).
    let mut names: Vec<BlobName> = Vec::new();
    for index in 0..8usize {
        let contents = if index < 6 {
            Bytes::from_static(b"listed")
        } else {
            Bytes::from(vec![7u8; 300_000])
        };
        let stored = store.put(&BlobName::random(), contents).await.expect("put");
        names.push(stored);
    }
    let later = SystemTime::now() + Duration::from_secs(3600);
    let earlier = SystemTime::now() - Duration::from_secs(3600);
    // Every blob appears once, by the name it was stored as, in its shard or in a pack
    // segment, when it is older than the cutoff; none when it is newer.
    for (cutoff, expected) in [(later, names.len()), (earlier, 0)] {
        let mut listed: Vec<BlobName> = Vec::new();
        for shard in 0..SHARD_COUNT {
            let listing = store.list_settled(shard as u8, cutoff).await.expect("list");
            let prefix = format!("{shard:02x}");
            assert!(
                listing
                    .settled_blobs
                    .iter()
                    .all(|name| name.identity().starts_with(&prefix)),
                "a shard lists only its own blobs"
            );
            listed.extend(listing.settled_blobs);
        }
        for segment in store.pack_segments().await.expect("segments") {
            listed.extend(
                store
                    .list_settled_packed(segment, cutoff)
                    .await
                    .expect("list pack"),
            );
        }
        listed.retain(|name| names.contains(name));
        assert_eq!(listed.len(), expected);
        for name in &names[..expected] {
            assert!(listed.contains(name), "{name} is listed as it was stored");
        }
    }
    for name in &names {
        store.delete(name).await.expect("delete");
        assert!(matches!(store.read(name).await, Err(BlobError::NotFound)));
    }
    for segment in store.pack_segments().await.expect("segments") {
        assert!(
            store
                .list_settled_packed(segment, later)
                .await
                .expect("list pack")
                .iter()
                .all(|listed| !names.contains(listed)),
            "a deleted packed blob is not listed"
        );
    }
}

async fn missing_blobs_are_not_found(store: &BlobStore) {
    let name = BlobName::random();
    assert!(matches!(store.read(&name).await, Err(BlobError::NotFound)));
    assert!(matches!(
        store.read_range(&name, 0..10).await,
        Err(BlobError::NotFound)
    ));
    assert!(matches!(
        store
            .open_sealed_ranges(&name, SERVICE, &BlobKey::generate(), 10)
            .await,
        Err(BlobError::NotFound)
    ));
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Backend {
    Azurite,
    S3,
}

impl Backend {
    fn required_variable(self) -> &'static str {
        match self {
            Backend::Azurite => "HDS_TEST_AZURITE",
            Backend::S3 => "HDS_TEST_S3",
        }
    }

    fn binary(self) -> PathBuf {
        let (variable, relative) = match self {
            Backend::Azurite => (
                "HDS_AZURITE_BLOB",
                ".cache/hds-ci/azurite/node_modules/.bin/azurite-blob",
            ),
            Backend::S3 => ("HDS_S3S_FS", ".cache/hds-ci/bin/s3s-fs"),
        };
        if let Some(path) = std::env::var_os(variable).filter(|path| !path.is_empty()) {
            return PathBuf::from(path);
        }
        let home = std::env::var_os("HOME").unwrap_or_default();
        PathBuf::from(home).join(relative)
    }
}

/// A server started for one test, killed when dropped.
struct Server {
    backend: Backend,
    child: Child,
    address: SocketAddr,
    _directory: tempfile::TempDir,
}

impl Server {
    /// The server, or `None` (after saying why) when it is not installed and not required.
    fn start(backend: Backend) -> Option<Server> {
        let binary = backend.binary();
        let required = std::env::var(backend.required_variable()).is_ok_and(|value| value == "1");
        if !binary.is_file() {
            assert!(
                !required,
                "{} is set but {} is not installed (scripts/object-stores installs it)",
                backend.required_variable(),
                binary.display()
            );
            eprintln!(
                "SKIPPED {backend:?} backend: {} is not installed (scripts/object-stores installs it; {}=1 makes this a failure)",
                binary.display(),
                backend.required_variable()
            );
            return None;
        }
        // A free port can be taken between choosing it and the server binding it: try again.
        let mut last_error = String::new();
        for _ in 0..5 {
            match Server::try_start(backend, &binary) {
                Ok(server) => return Some(server),
                Err(error) => last_error = error,
            }
        }
        panic!("{backend:?} did not start: {last_error}");
    }

    fn try_start(backend: Backend, binary: &PathBuf) -> Result<Server, String> {
        let directory = tempfile::tempdir().map_err(|error| error.to_string())?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map_err(|error| error.to_string())?
            .port();
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let mut command = Command::new(binary);
        match backend {
            Backend::Azurite => {
                command
                    .args(["--blobHost", "127.0.0.1", "--blobPort"])
                    .arg(port.to_string())
                    .args([
                        "--inMemoryPersistence",
                        "--silent",
                        "--skipApiVersionCheck",
                        "--disableTelemetry",
                    ]);
            }
            Backend::S3 => {
                // Buckets are directories of the server's root.
                std::fs::create_dir(directory.path().join("blobs"))
                    .map_err(|error| error.to_string())?;
                command
                    .args(["--host", "127.0.0.1", "--port"])
                    .arg(port.to_string())
                    .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
                    .arg(directory.path());
            }
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| format!("{}: {error}", binary.display()))?;
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("exited with {status}"));
            }
            if TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_ok() {
                return Ok(Server {
                    backend,
                    child,
                    address,
                    _directory: directory,
                });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "not listening on {address} after {START_DEADLINE:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The object store variables a `hds up` would be given for this server.
    fn environment(&self) -> Vec<(String, String)> {
        let pairs: Vec<(&str, String)> = match self.backend {
            Backend::Azurite => vec![
                ("AZURE_STORAGE_USE_EMULATOR", "true".to_owned()),
                (
                    "AZURITE_BLOB_STORAGE_URL",
                    format!("http://{}", self.address),
                ),
            ],
            Backend::S3 => vec![
                ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY.to_owned()),
                ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY.to_owned()),
                ("AWS_ENDPOINT", format!("http://{}", self.address)),
                ("AWS_ALLOW_HTTP", "true".to_owned()),
                ("AWS_REGION", "us-east-1".to_owned()),
            ],
        };
        pairs
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates a container in Azurite: one Shared Key-signed `PUT ?restype=container` (the blob
/// client hds uses cannot create containers; an operator creates them once, as docs/deploy.md
/// says).
async fn create_azurite_container(address: SocketAddr, container: &str) {
    use base64::Engine as _;
    let date = time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
        ))
        .expect("date");
    let version = "2021-08-06";
    let string_to_sign = format!(
        "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{container}\nrestype:container"
    );
    let key = base64::engine::general_purpose::STANDARD
        .decode(AZURITE_KEY)
        .expect("key");
    let signature = aws_lc_rs::hmac::sign(
        &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key),
        string_to_sign.as_bytes(),
    );
    let authorization = format!(
        "SharedKey {AZURITE_ACCOUNT}:{}",
        base64::engine::general_purpose::STANDARD.encode(signature.as_ref())
    );
    let response = reqwest::Client::new()
        .put(format!(
            "http://{address}/{AZURITE_ACCOUNT}/{container}?restype=container"
        ))
        .header("x-ms-date", date)
        .header("x-ms-version", version)
        .header("authorization", authorization)
        .header("content-length", "0")
        .send()
        .await
        .expect("create container");
    assert!(
        response.status().is_success(),
        "creating the container: {}",
        response.status()
    );
}
