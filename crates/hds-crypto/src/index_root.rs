//! The index root key of a DICOM service: random, stored wrapped by the service root key, and
//! the source of the service's [`IndexKeys`].
//!
//! Why a key of its own rather than deriving the index keys from the service root key: rotating
//! the root key (a new root key, every wrapped key re-wrapped) must not change a single blind
//! token or sealed index value, or a rotation would have to rewrite the whole index. With the
//! index keys one wrapping level down, a rotation re-wraps one more 32-byte key and nothing else.

use zeroize::Zeroizing;

use crate::keys::{DataKey, IndexKeys, KeyError, ServiceRootKey, StudyKey};

/// The owner label under which the index root key is wrapped. Study keys are wrapped under
/// their study's 32-byte blind token; this label has another length, and the wrapping binding
/// is length-prefixed, so the two can never be confused.
const INDEX_ROOT_OWNER: &[u8] = b"hds/index-root-key";

/// A service's index root key: 256 random bits from which its index keys are derived.
/// Zeroized on drop; `Debug` hides the bytes.
pub struct IndexRootKey {
    data_key: DataKey,
}

impl std::fmt::Debug for IndexRootKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("IndexRootKey(<redacted>)")
    }
}

impl IndexRootKey {
    /// A fresh random key.
    pub fn generate() -> IndexRootKey {
        IndexRootKey {
            data_key: DataKey::generate(),
        }
    }

    /// The index keys (token and value keys) derived from this key.
    pub fn index_keys(&self) -> IndexKeys {
        let copy = DataKey::from_bytes(Zeroizing::new(*self.data_key.expose()));
        IndexKeys::derive(&ServiceRootKey::from_data_key(copy))
    }

    /// The index keys of the data partition `partition` of the service: derived from this key
    /// with the partition's name, so a partition's tokens and sealed values differ from every
    /// other partition's (the same UID gets another token in each) while the service keeps one
    /// key hierarchy: rotating or losing the service's key covers all its partitions, and no
    /// partition key is ever stored. The default partition uses [`IndexRootKey::index_keys`].
    pub fn partition_index_keys(&self, partition: &str) -> IndexKeys {
        let mut info = Vec::with_capacity(PARTITION_INFO.len() + 8 + partition.len());
        info.extend_from_slice(PARTITION_INFO);
        info.extend_from_slice(&(partition.len() as u64).to_be_bytes());
        info.extend_from_slice(partition.as_bytes());
        let derived = crate::keys::derive_partition_root(self.data_key.expose(), &info);
        IndexKeys::derive(&ServiceRootKey::from_data_key(DataKey::from_bytes(derived)))
    }
}

/// The HKDF label of a partition's index root (followed by the length-prefixed name).
const PARTITION_INFO: &[u8] = b"hds/key-hierarchy/v1/partition-index-root";

impl ServiceRootKey {
    /// Wraps `index_root_key` for storage, bound to `service`.
    pub fn wrap_index_root_key(&self, service: &str, index_root_key: &IndexRootKey) -> Vec<u8> {
        let copy = DataKey::from_bytes(Zeroizing::new(*index_root_key.data_key.expose()));
        self.wrap_study_key(service, INDEX_ROOT_OWNER, &StudyKey::from_data_key(copy))
    }

    /// Unwraps what [`ServiceRootKey::wrap_index_root_key`] produced for the same service.
    pub fn unwrap_index_root_key(
        &self,
        service: &str,
        wrapped: &[u8],
    ) -> Result<IndexRootKey, KeyError> {
        let study_key = self.unwrap_study_key(service, INDEX_ROOT_OWNER, wrapped)?;
        let copy = DataKey::from_bytes(Zeroizing::new(*study_key.expose()));
        Ok(IndexRootKey { data_key: copy })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_have_their_own_index_keys() {
        let index_root = IndexRootKey::generate();
        let default = index_root.index_keys().token("StudyInstanceUID", b"1.2.3");
        let first = index_root
            .partition_index_keys("a")
            .token("StudyInstanceUID", b"1.2.3");
        let again = index_root
            .partition_index_keys("a")
            .token("StudyInstanceUID", b"1.2.3");
        let other = index_root
            .partition_index_keys("b")
            .token("StudyInstanceUID", b"1.2.3");
        assert_eq!(first, again);
        assert_ne!(first, default);
        assert_ne!(first, other);
        let sealed = index_root
            .partition_index_keys("a")
            .seal_value(b"binding", b"value");
        assert!(
            index_root
                .partition_index_keys("b")
                .open_value(b"binding", &sealed)
                .is_err()
        );
    }

    #[test]
    fn index_root_key_round_trips_and_is_bound_to_its_service() {
        let root = ServiceRootKey::generate();
        let index_root = IndexRootKey::generate();
        let wrapped = root.wrap_index_root_key("ws/a", &index_root);
        let unwrapped = root
            .unwrap_index_root_key("ws/a", &wrapped)
            .expect("same service unwraps");
        assert_eq!(
            index_root.index_keys().token("d", b"v"),
            unwrapped.index_keys().token("d", b"v")
        );
        assert_eq!(
            root.unwrap_index_root_key("ws/b", &wrapped).err(),
            Some(KeyError::Integrity)
        );
        assert_eq!(
            ServiceRootKey::generate()
                .unwrap_index_root_key("ws/a", &wrapped)
                .err(),
            Some(KeyError::Integrity)
        );
        // A wrapped index root key is not a study key of any study.
        assert!(root.unwrap_study_key("ws/a", &[0u8; 32], &wrapped).is_err());
        // Index keys differ from the ones the root key itself would give.
        assert_ne!(
            root.index_keys().token("d", b"v"),
            index_root.index_keys().token("d", b"v")
        );
    }
}
