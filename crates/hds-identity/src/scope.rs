//! ARM scopes: `/`, `/subscriptions/{s}`, `/subscriptions/{s}/resourceGroups/{rg}`, and
//! resource ids below them. A role assignment at a scope applies to it and to everything
//! under it; "under" is decided on whole path segments, case-insensitively, as ARM compares
//! ids.

/// A scope normalized for storage and comparison: no trailing slash (except the root `/`),
/// no empty segments, lowercased.
pub(crate) fn scope_key(scope: &str) -> Option<String> {
    if !scope.starts_with('/') {
        return None;
    }
    let segments: Vec<&str> = scope
        .split('/')
        .filter(|segment| !segment.is_empty())
        .collect();
    if segments.is_empty() {
        return Some("/".to_owned());
    }
    let mut key = String::with_capacity(scope.len());
    for segment in segments {
        key.push('/');
        key.push_str(&segment.to_ascii_lowercase());
    }
    Some(key)
}

/// The scope as the caller spelled it, minus a trailing slash and empty segments (ARM echoes
/// ids back in the caller's case).
pub(crate) fn display_scope(scope: &str) -> String {
    let segments: Vec<&str> = scope
        .split('/')
        .filter(|segment| !segment.is_empty())
        .collect();
    if segments.is_empty() {
        return "/".to_owned();
    }
    let mut display = String::with_capacity(scope.len());
    for segment in segments {
        display.push('/');
        display.push_str(segment);
    }
    display
}

/// Whether an assignment at `assignment_scope_key` applies at `target_scope_key`: the same
/// scope or an ancestor, on whole segments (`/subscriptions/a` does not cover
/// `/subscriptions/ab`). Both are [`scope_key`]s.
pub(crate) fn covers(assignment_scope_key: &str, target_scope_key: &str) -> bool {
    if assignment_scope_key == "/" {
        return true;
    }
    match target_scope_key.strip_prefix(assignment_scope_key) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_normalize_case_and_slashes() {
        assert_eq!(
            scope_key("/Subscriptions/ABC/resourceGroups/RG/").as_deref(),
            Some("/subscriptions/abc/resourcegroups/rg")
        );
        assert_eq!(scope_key("/").as_deref(), Some("/"));
        assert_eq!(scope_key("subscriptions/x"), None);
        assert_eq!(
            display_scope("/subscriptions/A//resourceGroups/B/"),
            "/subscriptions/A/resourceGroups/B"
        );
    }

    #[test]
    fn coverage_is_by_whole_segments() {
        let subscription = "/subscriptions/a";
        let group = "/subscriptions/a/resourcegroups/rg";
        let vault = "/subscriptions/a/resourcegroups/rg/providers/microsoft.keyvault/vaults/v";
        assert!(covers(subscription, vault));
        assert!(covers(group, vault));
        assert!(covers(vault, vault));
        assert!(covers("/", vault));
        assert!(!covers(vault, group));
        assert!(!covers("/subscriptions/a", "/subscriptions/ab"));
        assert!(!covers(
            "/subscriptions/a/resourcegroups/rg",
            "/subscriptions/a/resourcegroups/rg2/providers/x/y/z"
        ));
    }
}
