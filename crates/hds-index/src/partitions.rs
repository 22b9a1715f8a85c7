//! Data partitions: independent sets of studies inside one DICOM service, as Azure's DICOM
//! service has them (`partitions/{name}/` routes), where the same UIDs may exist once per
//! partition.
//!
//! A partition is a *scope*: the value every row of the partition carries in its `service`
//! column (`{service}#{name}`), so every query, uniqueness constraint and delete that isolates
//! services isolates partitions without change. The default partition, `Microsoft.Default`, is
//! the service's own scope: data stored before partitions existed, or in a service without
//! them, is the default partition's, and a service that never uses partitions costs nothing.
//! A partition's tokens and sealed values are made under index keys derived for it from the
//! service's index root key ([`crate::ServiceKeyring::partition`]), so its tokens differ from
//! every other partition's, and its study keys are its own: deleting a study in one partition
//! never touches another's key.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::sql::column;
use crate::{Index, IndexError};

/// The name of every service's default partition.
pub const DEFAULT_PARTITION: &str = "Microsoft.Default";

/// The longest partition name (Azure's limit).
pub const MAX_PARTITION_NAME_LEN: usize = 64;

/// The most data partitions a service may have: each store may name a new one, so their
/// number (and `GET partitions`) is bounded.
pub const MAX_PARTITIONS: i64 = 10_000;

/// What separates a service from a partition name in a scope: neither service keys (UUIDs or
/// `{workspace}/{service}`) nor partition names contain it.
const SCOPE_SEPARATOR: char = '#';

/// Why a partition name is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PartitionNameError {
    /// Empty.
    #[error("the partition name is empty")]
    Empty,
    /// Longer than [`MAX_PARTITION_NAME_LEN`].
    #[error("the partition name is longer than 64 characters")]
    TooLong,
    /// Only dots: `.` and `..` are dot segments, which clients and proxies resolve away, so
    /// such a partition could not be addressed reliably.
    #[error("the partition name cannot consist of dots only")]
    DotsOnly,
    /// A character other than letters, digits, `.`, `-` and `_`.
    #[error("the partition name may contain only letters A-Z and a-z, digits, '.', '-' and '_'")]
    InvalidCharacter,
}

/// Checks a partition name against Azure's rules: 1-64 characters, each an ASCII letter or
/// digit, `.`, `-` or `_` (DICOM UIDs, GUIDs and readable names all fit). Unlike Azure, a
/// name of dots only is refused too ([`PartitionNameError::DotsOnly`]).
pub fn check_partition_name(name: &str) -> Result<(), PartitionNameError> {
    if name.is_empty() {
        return Err(PartitionNameError::Empty);
    }
    if name.len() > MAX_PARTITION_NAME_LEN {
        return Err(PartitionNameError::TooLong);
    }
    if !name
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'-' | b'_'))
    {
        return Err(PartitionNameError::InvalidCharacter);
    }
    if name.bytes().all(|byte| byte == b'.') {
        return Err(PartitionNameError::DotsOnly);
    }
    Ok(())
}

/// The scope the rows of `partition` of `service` are filed under: the service itself for the
/// default partition.
pub fn partition_scope(service: &str, partition: &str) -> String {
    if partition == DEFAULT_PARTITION {
        service.to_owned()
    } else {
        format!("{service}{SCOPE_SEPARATOR}{partition}")
    }
}

/// The service and partition (`None`: the default) of a scope.
pub(crate) fn split_scope(scope: &str) -> (&str, Option<&str>) {
    match scope.split_once(SCOPE_SEPARATOR) {
        Some((service, partition)) => (service, Some(partition)),
        None => (scope, None),
    }
}

/// One partition of a service, as `GET partitions` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// A number assigned by hds, unique within the service: 1 for the default partition.
    pub key: i64,
    /// Its name.
    pub name: String,
    /// When it was created (its first store), in microseconds since 1970-01-01 UTC.
    pub created_micros: i64,
}

impl Index {
    /// The partitions of `service`, the default first (recorded on first listing), then the
    /// others in creation order.
    pub async fn partitions(&self, service: &str) -> Result<Vec<Partition>, IndexError> {
        self.partition_or_add(service, DEFAULT_PARTITION).await?;
        let rows = sqlx::query(
            "SELECT id, name, created_us FROM dicom_partitions WHERE service = $1 ORDER BY id",
        )
        .bind(service)
        .fetch_all(self.database.pool())
        .await?;
        let mut partitions = rows
            .iter()
            .map(partition_of_row)
            .collect::<Result<Vec<_>, _>>()?;
        partitions.sort_by_key(|partition| partition.key);
        Ok(partitions)
    }

    /// The partition `name` of `service`, if it exists. The default partition always exists.
    pub async fn partition(
        &self,
        service: &str,
        name: &str,
    ) -> Result<Option<Partition>, IndexError> {
        if name == DEFAULT_PARTITION {
            return self.partition_or_add(service, name).await.map(Some);
        }
        self.read_partition(service, name).await
    }

    /// The partition `name` of `service`, created if it does not exist yet (a store into it).
    /// Of concurrent creations, on any number of nodes, one row wins and all see it.
    pub async fn partition_or_add(
        &self,
        service: &str,
        name: &str,
    ) -> Result<Partition, IndexError> {
        if let Some(partition) = self.read_partition(service, name).await? {
            return Ok(partition);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let mut transaction = self.database.begin_write().await?;
        let count: i64 = column(
            &sqlx::query("SELECT COUNT(*) FROM dicom_partitions WHERE service = $1")
                .bind(service)
                .fetch_one(&mut *transaction)
                .await?,
            0,
        )?;
        // Concurrent creations on PostgreSQL may pass this check together: the bound is
        // approximate by at most the number of concurrent stores, never unbounded.
        if count >= MAX_PARTITIONS && name != DEFAULT_PARTITION {
            return Err(IndexError::PartitionLimit);
        }
        sqlx::query(
            "INSERT INTO dicom_partitions (service, name, scope, created_us) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (service, name) DO NOTHING",
        )
        .bind(service)
        .bind(name)
        .bind(partition_scope(service, name))
        .bind(now)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        self.read_partition(service, name)
            .await?
            .ok_or_else(|| IndexError::Corrupt("a partition just recorded is missing".into()))
    }

    /// The scopes of `service`'s partitions other than the default: what a deleted service's
    /// data is also filed under.
    pub async fn partition_scopes(&self, service: &str) -> Result<Vec<String>, IndexError> {
        let rows =
            sqlx::query("SELECT scope FROM dicom_partitions WHERE service = $1 AND name <> $2")
                .bind(service)
                .bind(DEFAULT_PARTITION)
                .fetch_all(self.database.pool())
                .await?;
        rows.iter().map(|row| column::<String>(row, 0)).collect()
    }

    /// Forgets the partitions of a deleted `service` (their data deleted first).
    pub async fn delete_partitions_of(&self, service: &str) -> Result<(), IndexError> {
        let mut transaction = self.database.begin_write().await?;
        sqlx::query("DELETE FROM dicom_partitions WHERE service = $1")
            .bind(service)
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await?;
        Ok(())
    }

    async fn read_partition(
        &self,
        service: &str,
        name: &str,
    ) -> Result<Option<Partition>, IndexError> {
        let row = sqlx::query(
            "SELECT id, name, created_us FROM dicom_partitions WHERE service = $1 AND name = $2",
        )
        .bind(service)
        .bind(name)
        .fetch_optional(self.database.pool())
        .await?;
        row.as_ref().map(partition_of_row).transpose()
    }
}

fn partition_of_row(row: &sqlx::any::AnyRow) -> Result<Partition, IndexError> {
    let id: i64 = column(row, 0)?;
    let name: String = column(row, 1)?;
    // Row ids count from 1 across services; the default partition is 1 in every service, as
    // in Azure, and every other one gets its row id + 1, unique within the service.
    let key = if name == DEFAULT_PARTITION { 1 } else { id + 1 };
    Ok(Partition {
        key,
        name,
        created_micros: column(row, 2)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_azures_rules() {
        assert_eq!(check_partition_name("Microsoft.Default"), Ok(()));
        assert_eq!(check_partition_name("1.2.840.10008"), Ok(()));
        assert_eq!(
            check_partition_name("6b2b4c1e-8f0e-4c2a-9b1e-000000000000"),
            Ok(())
        );
        assert_eq!(check_partition_name(&"a".repeat(64)), Ok(()));
        assert_eq!(
            check_partition_name(&"a".repeat(65)),
            Err(PartitionNameError::TooLong)
        );
        assert_eq!(check_partition_name(""), Err(PartitionNameError::Empty));
        assert_eq!(check_partition_name("a..b"), Ok(()));
        for dots in [".", "..", "..."] {
            assert_eq!(
                check_partition_name(dots),
                Err(PartitionNameError::DotsOnly)
            );
        }
        for hostile in ["a/b", "a#b", "a b", "a%2F", "é", "a\0b", "a\\b", "../x"] {
            assert_eq!(
                check_partition_name(hostile),
                Err(PartitionNameError::InvalidCharacter),
                "{hostile:?}"
            );
        }
    }

    #[test]
    fn scopes_split_back() {
        assert_eq!(partition_scope("ws/svc", DEFAULT_PARTITION), "ws/svc");
        assert_eq!(split_scope("ws/svc"), ("ws/svc", None));
        let scope = partition_scope("ws/svc", "p1");
        assert_eq!(split_scope(&scope), ("ws/svc", Some("p1")));
    }
}
