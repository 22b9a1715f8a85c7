//! A service's extended query tags and its long-running operations: one index call each, in
//! the service's name (the index keeps the registry; see `hds_index`'s `extended.rs`).

use dicom_core::Tag;
use hds_dicom::extended::ExtendedTagDefinition;
use hds_index::{AddTagsOutcome, ExtendedQueryTag, Operation, TagChange, TagError, TagQueryStatus};

use crate::{ArchiveError, ServiceArchive};

impl ServiceArchive {
    /// Adds tags (status Adding) and starts the reindex of the instances already stored.
    pub async fn add_extended_query_tags(
        &self,
        definitions: &[ExtendedTagDefinition],
    ) -> Result<AddTagsOutcome, ArchiveError> {
        Ok(self
            .index
            .add_extended_query_tags(&self.service, definitions)
            .await?)
    }

    /// The service's tags, in path order.
    pub async fn extended_query_tags(&self) -> Result<Vec<ExtendedQueryTag>, ArchiveError> {
        Ok(self.index.extended_query_tags(&self.service).await?)
    }

    /// One tag, if the service has it.
    pub async fn extended_query_tag(
        &self,
        tag: Tag,
    ) -> Result<Option<ExtendedQueryTag>, ArchiveError> {
        Ok(self.index.extended_query_tag(&self.service, tag).await?)
    }

    /// Enables or disables queries on a ready tag.
    pub async fn set_extended_query_tag_query_status(
        &self,
        tag: Tag,
        query_status: TagQueryStatus,
    ) -> Result<TagChange, ArchiveError> {
        Ok(self
            .index
            .set_extended_query_tag_query_status(&self.service, tag, query_status)
            .await?)
    }

    /// Deletes a tag (not while its reindex runs).
    pub async fn delete_extended_query_tag(&self, tag: Tag) -> Result<TagChange, ArchiveError> {
        Ok(self
            .index
            .delete_extended_query_tag(&self.service, tag)
            .await?)
    }

    /// The instances whose value of the tag could not be indexed; `None` without such a tag.
    pub async fn extended_query_tag_errors(
        &self,
        tag: Tag,
        limit: u32,
        offset: u32,
    ) -> Result<Option<Vec<TagError>>, ArchiveError> {
        if !self.is_unlocked() {
            return Err(ArchiveError::KeyAccessLost);
        }
        Ok(self
            .index
            .extended_query_tag_errors(&self.service, tag, limit, offset)
            .await?)
    }

    /// One of the service's operations.
    pub async fn operation(&self, id: &str) -> Result<Option<Operation>, ArchiveError> {
        Ok(self.index.operation(&self.service, id).await?)
    }
}
