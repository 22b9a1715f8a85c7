//! ARM resource ids: parsing, formatting and case-insensitive identity.
//!
//! An id is a scope followed by zero or more provider segments:
//!
//! ```text
//! /subscriptions/{sub}[/resourceGroups/{rg}]
//!     [/providers/{Namespace}/{type}/{name}[/{childType}/{childName}...]]   a resource
//!     [/providers/{Namespace}/{type}/{name}...]                             an extension on it
//! ```
//!
//! ARM compares ids, types and names without regard to case, so [`ResourceId`] keeps the
//! spelling it was given (for display) and a lowercase key (for `Eq`, `Hash` and storage).

use std::fmt;
use std::hash::{Hash, Hasher};

/// Why a string is not a resource id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResourceIdError {
    /// The id does not start with `/subscriptions/{id}`.
    #[error("the resource id must start with '/subscriptions/{{subscriptionId}}'")]
    MissingSubscription,
    /// A segment is empty, or a `providers` segment is not followed by a namespace.
    #[error("the resource id is malformed")]
    Malformed,
    /// A type segment has no name after it.
    #[error("the resource id ends with a type that has no name")]
    MissingName,
}

/// One `/providers/{Namespace}/{type}/{name}...` part of an id.
#[derive(Debug, Clone)]
struct ProviderSegment {
    namespace: String,
    /// `(type, name)` pairs, outermost first.
    types: Vec<(String, String)>,
}

/// A parsed ARM resource id. Equality and hashing ignore case.
#[derive(Debug, Clone)]
pub struct ResourceId {
    subscription: String,
    resource_group: Option<String>,
    providers: Vec<ProviderSegment>,
    text: String,
    key: String,
}

impl ResourceId {
    /// Parses an id such as
    /// `/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/v/keys/k`.
    /// A trailing `/` is tolerated; the keywords `subscriptions`, `resourceGroups` and
    /// `providers` may be spelled in any case.
    pub fn parse(text: &str) -> Result<ResourceId, ResourceIdError> {
        let trimmed = text.strip_suffix('/').unwrap_or(text);
        let Some(rest) = trimmed.strip_prefix('/') else {
            return Err(ResourceIdError::MissingSubscription);
        };
        let segments: Vec<&str> = rest.split('/').collect();
        let (id, trailing) = Self::from_segments(&segments)?;
        match trailing {
            Some(_) => Err(ResourceIdError::MissingName),
            None => Ok(id),
        }
    }

    /// Parses already split path segments. A final type without a name (a collection, or a
    /// POST action) is returned beside the id of what precedes it.
    pub(crate) fn from_segments(
        segments: &[&str],
    ) -> Result<(ResourceId, Option<String>), ResourceIdError> {
        if segments.iter().any(|segment| segment.is_empty()) {
            return Err(ResourceIdError::Malformed);
        }
        let mut position;
        let subscription = match segments {
            [keyword, subscription, ..] if keyword.eq_ignore_ascii_case("subscriptions") => {
                position = 2;
                (*subscription).to_owned()
            }
            _ => return Err(ResourceIdError::MissingSubscription),
        };
        let mut resource_group = None;
        if let [keyword, group, ..] = &segments[position..]
            && keyword.eq_ignore_ascii_case("resourceGroups")
        {
            resource_group = Some((*group).to_owned());
            position += 2;
        }
        let mut providers: Vec<ProviderSegment> = Vec::new();
        let mut trailing = None;
        while position < segments.len() {
            let segment = segments[position];
            let current_is_open = providers.last().is_some();
            if segment.eq_ignore_ascii_case("providers") && position + 1 < segments.len() {
                providers.push(ProviderSegment {
                    namespace: segments[position + 1].to_owned(),
                    types: Vec::new(),
                });
                position += 2;
                continue;
            }
            let Some(current) = providers.last_mut().filter(|_| current_is_open) else {
                // Something other than `providers` right after the scope: only a trailing
                // word (a collection such as `resourcegroups`, or an action) is allowed.
                if position + 1 == segments.len() {
                    trailing = Some(segment.to_owned());
                    position += 1;
                    continue;
                }
                return Err(ResourceIdError::Malformed);
            };
            if position + 1 < segments.len() {
                current
                    .types
                    .push((segment.to_owned(), segments[position + 1].to_owned()));
                position += 2;
            } else {
                trailing = Some(segment.to_owned());
                position += 1;
            }
        }
        // A `providers/{Namespace}` with no type under it is only valid as a collection
        // prefix, which the callers handle through `trailing`.
        if let Some(last) = providers.last()
            && last.types.is_empty()
        {
            return Err(ResourceIdError::MissingName);
        }
        Ok((
            ResourceId::build(subscription, resource_group, providers),
            trailing,
        ))
    }

    /// Like [`from_segments`](Self::from_segments), but accepts a final
    /// `providers/{Namespace}/{type}` (a collection directly under a scope or resource): the
    /// id of the scope and the full collection type `{Namespace}/{type}` are returned.
    pub(crate) fn collection_from_segments(
        segments: &[&str],
    ) -> Result<(ResourceId, String), ResourceIdError> {
        let length = segments.len();
        if length >= 3 && segments[length - 3].eq_ignore_ascii_case("providers") {
            let (parent, trailing) = Self::from_segments(&segments[..length - 3])?;
            if trailing.is_some() {
                return Err(ResourceIdError::Malformed);
            }
            return Ok((
                parent,
                format!("{}/{}", segments[length - 2], segments[length - 1]),
            ));
        }
        let (parent, trailing) = Self::from_segments(segments)?;
        let Some(child_type) = trailing else {
            return Err(ResourceIdError::Malformed);
        };
        let Some(parent_type) = parent.resource_type() else {
            return Err(ResourceIdError::Malformed);
        };
        Ok((parent, format!("{parent_type}/{child_type}")))
    }

    fn build(
        subscription: String,
        resource_group: Option<String>,
        providers: Vec<ProviderSegment>,
    ) -> ResourceId {
        let mut text = format!("/subscriptions/{subscription}");
        if let Some(group) = &resource_group {
            text.push_str("/resourceGroups/");
            text.push_str(group);
        }
        for provider in &providers {
            text.push_str("/providers/");
            text.push_str(&provider.namespace);
            for (resource_type, name) in &provider.types {
                text.push('/');
                text.push_str(resource_type);
                text.push('/');
                text.push_str(name);
            }
        }
        let key = text.to_lowercase();
        ResourceId {
            subscription,
            resource_group,
            providers,
            text,
            key,
        }
    }

    /// The id of a subscription: `/subscriptions/{subscription}`.
    pub fn subscription(subscription: &str) -> ResourceId {
        ResourceId::build(subscription.to_owned(), None, Vec::new())
    }

    /// The id of a resource group: `/subscriptions/{subscription}/resourceGroups/{group}`.
    pub fn resource_group(subscription: &str, group: &str) -> ResourceId {
        ResourceId::build(subscription.to_owned(), Some(group.to_owned()), Vec::new())
    }

    /// A resource of `resource_type` (`Namespace/type[/childType...]`) with one name per type
    /// level, under this scope: a top-level resource when `self` is a subscription or a
    /// resource group, an extension resource when `self` is a resource.
    pub fn with_resource(&self, resource_type: &str, names: &[&str]) -> Option<ResourceId> {
        let mut parts = resource_type.trim_matches('/').split('/');
        let namespace = parts.next().filter(|namespace| !namespace.is_empty())?;
        let types: Vec<&str> = parts.collect();
        if types.is_empty()
            || types.len() != names.len()
            || types.iter().chain(names).any(|part| part.is_empty())
        {
            return None;
        }
        let mut providers = self.providers.clone();
        providers.push(ProviderSegment {
            namespace: namespace.to_owned(),
            types: types
                .iter()
                .zip(names)
                .map(|(resource_type, name)| ((*resource_type).to_owned(), (*name).to_owned()))
                .collect(),
        });
        Some(ResourceId::build(
            self.subscription.clone(),
            self.resource_group.clone(),
            providers,
        ))
    }

    /// A child of this resource: `{self}/{child_type}/{name}` (same provider namespace).
    pub fn child(&self, child_type: &str, name: &str) -> Option<ResourceId> {
        let mut providers = self.providers.clone();
        let last = providers.last_mut()?;
        last.types.push((child_type.to_owned(), name.to_owned()));
        Some(ResourceId::build(
            self.subscription.clone(),
            self.resource_group.clone(),
            providers,
        ))
    }

    /// Every name in the id with the full type it names: the resource group's name under
    /// `Microsoft.Resources/resourceGroups`, then each provider segment's names under their
    /// types (`NS/t` for the first, `NS/t/child` for the next...), outermost first.
    pub fn typed_names(&self) -> Vec<(String, &str)> {
        let mut names = Vec::new();
        if let Some(group) = &self.resource_group {
            names.push((
                "Microsoft.Resources/resourceGroups".to_owned(),
                group.as_str(),
            ));
        }
        for provider in &self.providers {
            let mut resource_type = provider.namespace.clone();
            for (type_segment, name) in &provider.types {
                resource_type.push('/');
                resource_type.push_str(type_segment);
                names.push((resource_type.clone(), name.as_str()));
            }
        }
        names
    }

    /// The id as given (keywords normalized to `subscriptions`, `resourceGroups`, `providers`).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The lowercase form used for comparisons and as the storage key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The subscription id.
    pub fn subscription_id(&self) -> &str {
        &self.subscription
    }

    /// The resource group name, if the id is in one.
    pub fn resource_group_name(&self) -> Option<&str> {
        self.resource_group.as_deref()
    }

    /// Whether this is `/subscriptions/{s}`.
    pub fn is_subscription(&self) -> bool {
        self.resource_group.is_none() && self.providers.is_empty()
    }

    /// Whether this is `/subscriptions/{s}/resourceGroups/{rg}`.
    pub fn is_resource_group(&self) -> bool {
        self.resource_group.is_some() && self.providers.is_empty()
    }

    /// Whether this names a resource (has at least one provider segment).
    pub fn is_resource(&self) -> bool {
        !self.providers.is_empty()
    }

    /// Whether this resource is an extension resource of another resource
    /// (`{resourceId}/providers/...`).
    pub fn is_extension(&self) -> bool {
        self.providers.len() > 1
    }

    /// The namespace of the resource's (innermost) provider, e.g. `Microsoft.KeyVault`.
    pub fn namespace(&self) -> Option<&str> {
        self.providers
            .last()
            .map(|provider| provider.namespace.as_str())
    }

    /// The full type, e.g. `Microsoft.KeyVault/vaults/keys`; for a resource group
    /// `Microsoft.Resources/resourceGroups`, for a subscription `Microsoft.Resources/subscriptions`.
    pub fn resource_type(&self) -> Option<String> {
        match self.providers.last() {
            Some(provider) => {
                let mut text = provider.namespace.clone();
                for (resource_type, _) in &provider.types {
                    text.push('/');
                    text.push_str(resource_type);
                }
                Some(text)
            }
            None if self.resource_group.is_some() => {
                Some("Microsoft.Resources/resourceGroups".to_owned())
            }
            None => Some("Microsoft.Resources/subscriptions".to_owned()),
        }
    }

    /// The resource's own name (the last name segment); for a resource group its name, for a
    /// subscription its id.
    pub fn name(&self) -> &str {
        match self
            .providers
            .last()
            .and_then(|provider| provider.types.last())
        {
            Some((_, name)) => name,
            None => self
                .resource_group
                .as_deref()
                .unwrap_or(self.subscription.as_str()),
        }
    }

    /// The `/`-joined names within the innermost provider segment: `vault/key` for a key,
    /// as templates write child names.
    pub fn qualified_name(&self) -> String {
        match self.providers.last() {
            Some(provider) => provider
                .types
                .iter()
                .map(|(_, name)| name.as_str())
                .collect::<Vec<_>>()
                .join("/"),
            None => self.name().to_owned(),
        }
    }

    /// What contains this id: the parent resource of a child, the scope of a top-level or
    /// extension resource, the subscription of a resource group; `None` for a subscription.
    pub fn parent(&self) -> Option<ResourceId> {
        let mut providers = self.providers.clone();
        match providers.last_mut() {
            Some(last) => {
                last.types.pop();
                if last.types.is_empty() {
                    providers.pop();
                }
                Some(ResourceId::build(
                    self.subscription.clone(),
                    self.resource_group.clone(),
                    providers,
                ))
            }
            None if self.resource_group.is_some() => {
                Some(ResourceId::subscription(&self.subscription))
            }
            None => None,
        }
    }

    /// The scope a resource sits in: for a top-level resource its resource group (or
    /// subscription), for an extension resource the resource it extends, for a child resource
    /// the scope of its top-level ancestor. For scopes themselves, their parent.
    pub fn scope(&self) -> Option<ResourceId> {
        if self.providers.is_empty() {
            return self.parent();
        }
        let mut providers = self.providers.clone();
        providers.pop();
        Some(ResourceId::build(
            self.subscription.clone(),
            self.resource_group.clone(),
            providers,
        ))
    }

    /// Whether `self` is `ancestor` or lies beneath it (case-insensitively).
    pub fn is_within(&self, ancestor: &ResourceId) -> bool {
        self.key == ancestor.key
            || (self.key.starts_with(&ancestor.key)
                && self.key.as_bytes().get(ancestor.key.len()) == Some(&b'/'))
    }

    /// Rewrites `self` from under `old_prefix` to under `new_prefix` (used when moving).
    pub(crate) fn rebase(
        &self,
        old_prefix: &ResourceId,
        new_prefix: &ResourceId,
    ) -> Option<ResourceId> {
        if !self.is_within(old_prefix) {
            return None;
        }
        // `is_within` compared lowercase keys; lowercasing can change byte lengths only for
        // non-ASCII text, so cut the original text by the number of characters instead.
        let prefix_characters = old_prefix.text.chars().count();
        let remainder: String = self.text.chars().skip(prefix_characters).collect();
        ResourceId::parse(&format!("{}{}", new_prefix.text, remainder)).ok()
    }
}

impl PartialEq for ResourceId {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for ResourceId {}

impl Hash for ResourceId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key.hash(state);
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.text)
    }
}

impl std::str::FromStr for ResourceId {
    type Err = ResourceIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        ResourceId::parse(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nested_resources() {
        let id = ResourceId::parse(
            "/subscriptions/S1/resourcegroups/RG/providers/Microsoft.KeyVault/vaults/v1/keys/k1",
        )
        .expect("valid id");
        assert_eq!(id.subscription_id(), "S1");
        assert_eq!(id.resource_group_name(), Some("RG"));
        assert_eq!(id.namespace(), Some("Microsoft.KeyVault"));
        assert_eq!(
            id.resource_type().as_deref(),
            Some("Microsoft.KeyVault/vaults/keys")
        );
        assert_eq!(id.name(), "k1");
        assert_eq!(id.qualified_name(), "v1/k1");
        assert_eq!(
            id.as_str(),
            "/subscriptions/S1/resourceGroups/RG/providers/Microsoft.KeyVault/vaults/v1/keys/k1"
        );
        let parent = id.parent().expect("has a parent");
        assert_eq!(
            parent.resource_type().as_deref(),
            Some("Microsoft.KeyVault/vaults")
        );
        let group = parent.parent().expect("vault's parent");
        assert!(group.is_resource_group());
        assert!(group.parent().expect("group's parent").is_subscription());
        assert!(id.is_within(&group));
        assert!(!group.is_within(&id));
    }

    #[test]
    fn compares_case_insensitively() {
        let upper = ResourceId::parse("/SUBSCRIPTIONS/S/RESOURCEGROUPS/RG/PROVIDERS/NS/T/N")
            .expect("valid id");
        let lower = ResourceId::parse("/subscriptions/s/resourceGroups/rg/providers/ns/t/n/")
            .expect("valid id");
        assert_eq!(upper, lower);
        let mut set = std::collections::HashSet::new();
        set.insert(upper);
        assert!(set.contains(&lower));
        // Similar-looking prefixes are not ancestors.
        let other = ResourceId::parse("/subscriptions/s/resourceGroups/rg2").expect("valid id");
        let group = ResourceId::parse("/subscriptions/s/resourceGroups/rg").expect("valid id");
        assert!(!other.is_within(&group));
    }

    #[test]
    fn parses_extension_resources() {
        let id = ResourceId::parse(
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/v/providers/Microsoft.Authorization/roleAssignments/0b5d",
        )
        .expect("valid id");
        assert!(id.is_extension());
        assert_eq!(
            id.resource_type().as_deref(),
            Some("Microsoft.Authorization/roleAssignments")
        );
        let scope = id.scope().expect("scope");
        assert_eq!(
            scope.resource_type().as_deref(),
            Some("Microsoft.KeyVault/vaults")
        );
        assert_eq!(id.parent(), Some(scope));
    }

    #[test]
    fn rejects_malformed_ids() {
        assert_eq!(
            ResourceId::parse("subscriptions/s"),
            Err(ResourceIdError::MissingSubscription)
        );
        assert_eq!(
            ResourceId::parse("/tenants/t"),
            Err(ResourceIdError::MissingSubscription)
        );
        assert_eq!(
            ResourceId::parse("/subscriptions/s/resourceGroups/rg/providers/NS/vaults"),
            Err(ResourceIdError::MissingName)
        );
        assert_eq!(
            ResourceId::parse("/subscriptions/s//resourceGroups/rg"),
            Err(ResourceIdError::Malformed)
        );
    }

    #[test]
    fn builds_and_rebases() {
        let group = ResourceId::resource_group("s", "rg");
        let vault = group
            .with_resource("Microsoft.KeyVault/vaults/", &["v"])
            .expect("one name for one type");
        assert_eq!(
            vault.as_str(),
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/v"
        );
        assert!(
            group
                .with_resource("Microsoft.KeyVault/vaults/keys", &["v"])
                .is_none()
        );
        let key = vault.child("keys", "k").expect("child");
        let target = ResourceId::resource_group("s2", "other");
        let moved = key.rebase(&group, &target).expect("under the group");
        assert_eq!(
            moved.as_str(),
            "/subscriptions/s2/resourceGroups/other/providers/Microsoft.KeyVault/vaults/v/keys/k"
        );
    }

    #[test]
    fn splits_collections_and_actions() {
        let (parent, collection_type) = ResourceId::collection_from_segments(&[
            "subscriptions",
            "s",
            "resourceGroups",
            "rg",
            "providers",
            "NS",
            "widgets",
        ])
        .expect("collection");
        assert!(parent.is_resource_group());
        assert_eq!(collection_type, "NS/widgets");
        let (parent, collection_type) = ResourceId::collection_from_segments(&[
            "subscriptions",
            "s",
            "resourceGroups",
            "rg",
            "providers",
            "NS",
            "widgets",
            "w",
            "parts",
        ])
        .expect("child collection");
        assert_eq!(parent.name(), "w");
        assert_eq!(collection_type, "NS/widgets/parts");
        let (id, action) = ResourceId::from_segments(&[
            "subscriptions",
            "s",
            "resourceGroups",
            "rg",
            "providers",
            "NS",
            "widgets",
            "w",
            "polish",
        ])
        .expect("action");
        assert_eq!(id.name(), "w");
        assert_eq!(action.as_deref(), Some("polish"));
    }
}
