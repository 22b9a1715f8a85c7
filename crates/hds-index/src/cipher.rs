//! The seam where index values become tokens and sealed bytes.

/// What a sealed value is bound to, so a ciphertext cannot be moved to another row or attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowBinding<'a> {
    /// The DICOM service (e.g. `default/dicom`).
    pub service: &'a str,
    /// The row's table, e.g. `study`.
    pub table: &'static str,
    /// The row's identity token (e.g. the token of its UID).
    pub row_token: &'a [u8],
    /// The column, e.g. `attributes`.
    pub column: &'static str,
}

/// Turns values into equality tokens and sealed bytes. Implementations must be deterministic
/// for `token` (same input, same output), must give different services different tokens
/// (searches find rows by their tokens alone and check the service only on the page they
/// return), and must authenticate in `open`.
///
/// Every method may fail with [`crate::IndexError::KeysUnavailable`] when the service's keys
/// are not in memory (access to its customer-managed key was lost).
pub trait IndexCipher: Send + Sync + 'static {
    /// The equality token of a normalized value of a named attribute (`domain` separates
    /// attributes and kinds of token, e.g. `PatientName`, `PatientName/prefix`, `StudyDate/Y`).
    fn token(
        &self,
        service: &str,
        domain: &str,
        normalized_value: &str,
    ) -> Result<Vec<u8>, crate::IndexError>;
    /// Seals a value for storage.
    fn seal(&self, binding: RowBinding<'_>, plaintext: &[u8])
    -> Result<Vec<u8>, crate::IndexError>;
    /// Opens a sealed value; fails if it was altered or moved.
    fn open(&self, binding: RowBinding<'_>, sealed: &[u8]) -> Result<Vec<u8>, crate::IndexError>;
}

/// Keeps tokens and values readable: the token is `domain \0 value \0 service`, sealing is the
/// identity.
/// For tests and tools only: a service's data at rest goes through [`crate::ServiceKeyrings`].
#[derive(Debug, Clone, Copy, Default)]
pub struct PlaintextIndexCipher;

impl IndexCipher for PlaintextIndexCipher {
    fn token(
        &self,
        service: &str,
        domain: &str,
        normalized_value: &str,
    ) -> Result<Vec<u8>, crate::IndexError> {
        let mut token =
            Vec::with_capacity(domain.len() + normalized_value.len() + service.len() + 2);
        token.extend_from_slice(domain.as_bytes());
        token.push(0);
        token.extend_from_slice(normalized_value.as_bytes());
        token.push(0);
        token.extend_from_slice(service.as_bytes());
        Ok(token)
    }

    fn seal(
        &self,
        _binding: RowBinding<'_>,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, crate::IndexError> {
        Ok(plaintext.to_vec())
    }

    fn open(&self, _binding: RowBinding<'_>, sealed: &[u8]) -> Result<Vec<u8>, crate::IndexError> {
        Ok(sealed.to_vec())
    }
}

impl RowBinding<'_> {
    /// The associated data of a sealed value: every field length-prefixed, so no two bindings
    /// encode alike.
    pub fn encode(&self) -> Vec<u8> {
        let fields: [&[u8]; 4] = [
            self.service.as_bytes(),
            self.table.as_bytes(),
            self.row_token,
            self.column.as_bytes(),
        ];
        let mut encoded =
            Vec::with_capacity(32 + fields.iter().map(|field| field.len()).sum::<usize>());
        for field in fields {
            encoded.extend_from_slice(&(field.len() as u64).to_be_bytes());
            encoded.extend_from_slice(field);
        }
        encoded
    }
}
