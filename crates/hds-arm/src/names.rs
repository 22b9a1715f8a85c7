//! What may appear in a request path, and what a resource may be named.
//!
//! Two checks, each in one place:
//! - [`check_path_segment`] runs on every decoded path segment of every control-plane request,
//!   before routing: a segment that decodes to something containing `/`, NUL or another
//!   control character, or that is `.` or `..`, never reaches the store (a group stored as
//!   `x/y` would be read back as a different id).
//! - [`check_resource_name`] runs on every write (PUT of a resource group, of a resource, of
//!   a template's resource): each name in the id must follow the naming rule Azure publishes
//!   for its type, or the generic rule for types without one.
//!
//! The table is data, not meaning: it says how long a vault's name may be, not what a vault
//! is. Rules are checked on the id's names before any provider sees the request, so a
//! provider's own checks are a second line, never the only one.

use http::StatusCode;

use crate::error::ArmError;
use crate::id::ResourceId;

/// Which characters a name may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alphabet {
    /// ASCII letters and digits.
    AsciiAlphanumeric,
    /// ASCII letters, digits and `-`.
    AsciiAlphanumericHyphen,
    /// ASCII letters, digits, `-` and `_`.
    AsciiAlphanumericHyphenUnderscore,
    /// Letters and digits of any script, `_`, `(`, `)`, `-` and `.` (ARM's `^[-\w\._\(\)]+$`).
    WordParenthesesPeriod,
    /// A GUID, `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
    Guid,
    /// Anything but the characters Azure refuses in every resource name (see
    /// [`GENERIC_FORBIDDEN`]), control characters and invisible formatting characters.
    Generic,
}

/// A naming rule: length in characters, alphabet, and the first and last character's class.
#[derive(Debug, Clone, Copy)]
struct NameRule {
    /// The lowercase full type the rule applies to.
    resource_type: &'static str,
    /// The error code Azure (or the provider) answers with.
    code: &'static str,
    min_length: usize,
    max_length: usize,
    alphabet: Alphabet,
    /// The first character must be a letter (`Some(false)`: a letter or digit).
    starts_with_letter: Option<bool>,
    /// The last character must be a letter or digit.
    ends_alphanumeric: bool,
    /// Two hyphens in a row are refused.
    no_double_hyphen: bool,
    /// What the rule says, for the error message.
    description: &'static str,
}

/// Azure's published rules for the types hds serves ("Naming rules and restrictions for
/// Azure resources", and the REST specifications' patterns).
const RULES: &[NameRule] = &[
    NameRule {
        resource_type: "microsoft.resources/resourcegroups",
        code: "InvalidResourceGroup",
        min_length: 1,
        max_length: 90,
        alphabet: Alphabet::WordParenthesesPeriod,
        starts_with_letter: None,
        ends_alphanumeric: false,
        no_double_hyphen: false,
        description: "1 to 90 letters, digits, '-', '.', '(', ')' or '_', not ending in '.'",
    },
    NameRule {
        resource_type: "microsoft.resources/deployments",
        code: "InvalidDeploymentName",
        min_length: 1,
        max_length: 64,
        alphabet: Alphabet::WordParenthesesPeriod,
        starts_with_letter: None,
        ends_alphanumeric: false,
        no_double_hyphen: false,
        description: "1 to 64 letters, digits, '-', '.', '(', ')' or '_', not ending in '.'",
    },
    NameRule {
        resource_type: "microsoft.keyvault/vaults",
        code: "VaultNameNotValid",
        min_length: 3,
        max_length: 24,
        alphabet: Alphabet::AsciiAlphanumericHyphen,
        starts_with_letter: Some(true),
        ends_alphanumeric: true,
        no_double_hyphen: true,
        description: "3 to 24 letters, digits and single hyphens, starting with a letter and ending with a letter or digit",
    },
    NameRule {
        resource_type: "microsoft.keyvault/vaults/keys",
        code: "KeyNameNotValid",
        min_length: 1,
        max_length: 127,
        alphabet: Alphabet::AsciiAlphanumericHyphen,
        starts_with_letter: None,
        ends_alphanumeric: false,
        no_double_hyphen: false,
        description: "1 to 127 letters, digits and hyphens",
    },
    NameRule {
        resource_type: "microsoft.managedidentity/userassignedidentities",
        code: "InvalidResourceName",
        min_length: 3,
        max_length: 128,
        alphabet: Alphabet::AsciiAlphanumericHyphenUnderscore,
        starts_with_letter: Some(false),
        ends_alphanumeric: false,
        no_double_hyphen: false,
        description: "3 to 128 letters, digits, hyphens and underscores, starting with a letter or digit",
    },
    NameRule {
        resource_type: "microsoft.healthcareapis/workspaces",
        code: "InvalidWorkspaceName",
        min_length: 3,
        max_length: 24,
        alphabet: Alphabet::AsciiAlphanumeric,
        starts_with_letter: None,
        ends_alphanumeric: true,
        no_double_hyphen: false,
        description: "3 to 24 letters and digits",
    },
    NameRule {
        resource_type: "microsoft.healthcareapis/workspaces/dicomservices",
        code: "InvalidDicomServiceName",
        min_length: 3,
        max_length: 24,
        alphabet: Alphabet::AsciiAlphanumericHyphen,
        starts_with_letter: Some(false),
        ends_alphanumeric: true,
        no_double_hyphen: false,
        description: "3 to 24 letters, digits and hyphens, starting and ending with a letter or digit",
    },
    NameRule {
        resource_type: "microsoft.eventgrid/systemtopics",
        code: "InvalidResourceName",
        min_length: 3,
        max_length: 128,
        alphabet: Alphabet::AsciiAlphanumericHyphen,
        starts_with_letter: None,
        ends_alphanumeric: false,
        no_double_hyphen: false,
        description: "3 to 128 letters, digits and hyphens",
    },
    NameRule {
        resource_type: "microsoft.eventgrid/systemtopics/eventsubscriptions",
        code: "InvalidResourceName",
        min_length: 3,
        max_length: 64,
        alphabet: Alphabet::AsciiAlphanumericHyphen,
        starts_with_letter: None,
        ends_alphanumeric: false,
        no_double_hyphen: false,
        description: "3 to 64 letters, digits and hyphens",
    },
    NameRule {
        resource_type: "microsoft.authorization/roleassignments",
        code: "InvalidRoleAssignmentId",
        min_length: 36,
        max_length: 36,
        alphabet: Alphabet::Guid,
        starts_with_letter: None,
        ends_alphanumeric: false,
        no_double_hyphen: false,
        description: "a GUID",
    },
    NameRule {
        resource_type: "microsoft.authorization/roledefinitions",
        code: "InvalidRoleDefinitionId",
        min_length: 36,
        max_length: 36,
        alphabet: Alphabet::Guid,
        starts_with_letter: None,
        ends_alphanumeric: false,
        no_double_hyphen: false,
        description: "a GUID",
    },
];

/// The rule for types without one of their own.
const GENERIC_RULE: NameRule = NameRule {
    resource_type: "",
    code: "InvalidResourceName",
    min_length: 1,
    max_length: 260,
    alphabet: Alphabet::Generic,
    starts_with_letter: None,
    ends_alphanumeric: false,
    no_double_hyphen: false,
    description: "1 to 260 characters, without control or formatting characters, without any of < > * % & : \\ ? / # +, and not ending in '.' or a space",
};

/// Characters Azure refuses in every resource name.
const GENERIC_FORBIDDEN: &[char] = &['<', '>', '*', '%', '&', ':', '\\', '?', '/', '#', '+'];

/// The longest path segment accepted at all (a name, a type, a subscription id).
pub(crate) const MAX_PATH_SEGMENT_CHARS: usize = 260;

/// Whether `character` is invisible text formatting: bidirectional overrides and isolates,
/// zero-width characters, the byte-order mark, soft hyphen. They make a name display as
/// another, so no name and no path segment may carry them.
fn is_formatting(character: char) -> bool {
    matches!(
        character,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
    )
}

/// Checks one decoded path segment: not `.` or `..`, no `/`, no control or invisible
/// formatting character, at most [`MAX_PATH_SEGMENT_CHARS`] characters.
pub(crate) fn check_path_segment(segment: &str) -> Result<(), ArmError> {
    let refuse = |why: &str| {
        Err(ArmError::new(
            StatusCode::BAD_REQUEST,
            "InvalidRequestUri",
            format!("The request path is not valid: {why}."),
        ))
    };
    if segment == "." || segment == ".." {
        return refuse("a segment is '.' or '..'");
    }
    if segment.contains('/') {
        return refuse("a segment contains an encoded '/'");
    }
    if segment.chars().any(|c| c.is_control() || is_formatting(c)) {
        return refuse("a segment contains a control or formatting character");
    }
    if segment.chars().count() > MAX_PATH_SEGMENT_CHARS {
        return refuse("a segment is longer than 260 characters");
    }
    Ok(())
}

/// Checks every name in `id` (a resource group's name; each `type/name` pair of each
/// provider segment) against its type's rule.
pub(crate) fn check_resource_id(id: &ResourceId) -> Result<(), ArmError> {
    for (resource_type, name) in id.typed_names() {
        check_resource_name(&resource_type, name)?;
    }
    Ok(())
}

/// Checks `name` against the rule of `resource_type` (the full type, any case).
pub(crate) fn check_resource_name(resource_type: &str, name: &str) -> Result<(), ArmError> {
    let lower = resource_type.to_ascii_lowercase();
    let rule = RULES
        .iter()
        .find(|rule| rule.resource_type == lower)
        .unwrap_or(&GENERIC_RULE);
    if follows(rule, name) {
        Ok(())
    } else {
        Err(ArmError::new(
            StatusCode::BAD_REQUEST,
            rule.code,
            format!(
                "The name '{}' is not valid for a resource of type '{}': use {}.",
                printable(name),
                printable(resource_type),
                rule.description
            ),
        ))
    }
}

fn follows(rule: &NameRule, name: &str) -> bool {
    let length = name.chars().count();
    if length < rule.min_length || length > rule.max_length {
        return false;
    }
    let (Some(first), Some(last)) = (name.chars().next(), name.chars().last()) else {
        return false;
    };
    let alphabet_ok = match rule.alphabet {
        Alphabet::AsciiAlphanumeric => name.chars().all(|c| c.is_ascii_alphanumeric()),
        Alphabet::AsciiAlphanumericHyphen => {
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        }
        Alphabet::AsciiAlphanumericHyphenUnderscore => name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        Alphabet::WordParenthesesPeriod => {
            last != '.'
                && name
                    .chars()
                    .all(|c| c.is_alphanumeric() || matches!(c, '_' | '(' | ')' | '-' | '.'))
        }
        Alphabet::Guid => uuid::Uuid::try_parse(name).is_ok() && name.len() == 36,
        Alphabet::Generic => {
            name != "."
                && name != ".."
                && last != '.'
                && last != ' '
                && name.chars().all(|c| {
                    !c.is_control() && !is_formatting(c) && !GENERIC_FORBIDDEN.contains(&c)
                })
        }
    };
    let first_ok = match rule.starts_with_letter {
        Some(true) => first.is_ascii_alphabetic(),
        Some(false) => first.is_ascii_alphanumeric(),
        None => true,
    };
    let last_ok = !rule.ends_alphanumeric || last.is_ascii_alphanumeric();
    let hyphens_ok = !rule.no_double_hyphen || !name.contains("--");
    alphabet_ok && first_ok && last_ok && hyphens_ok
}

/// Client input as it may be echoed: at most 64 characters, control and formatting
/// characters replaced by `?`.
pub fn printable(text: &str) -> String {
    text.chars()
        .take(64)
        .map(|c| {
            if c.is_control() || is_formatting(c) {
                '?'
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(resource_type: &str, name: &str) -> bool {
        check_resource_name(resource_type, name).is_err()
    }

    #[test]
    fn resource_group_names_follow_azure() {
        let group = "Microsoft.Resources/resourceGroups";
        let longest = "g".repeat(90);
        for good in [
            "a",
            "rg-1",
            "my_group(2).x",
            "Gruppe-Ärzte",
            longest.as_str(),
        ] {
            assert!(!refused(group, good), "{good} should be accepted");
        }
        let too_long = "g".repeat(91);
        for bad in [
            "",
            "ends.",
            "x/y",
            "a b",
            "nul\0",
            "new\nline",
            "rtl\u{202E}gpj",
            "..",
            too_long.as_str(),
            "semi;colon",
        ] {
            assert!(refused(group, bad), "{bad:?} should be refused");
        }
        let error = check_resource_name(group, "bad name.").expect_err("refused");
        assert_eq!(error.code(), "InvalidResourceGroup");
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn per_type_rules() {
        let vault = "Microsoft.KeyVault/vaults";
        assert!(!refused(vault, "kv-1"));
        let long_vault = "k".repeat(25);
        for bad in ["kv", "1kv", "kv-", "k--v", long_vault.as_str(), "kv_1"] {
            assert!(refused(vault, bad), "vault {bad}");
        }
        let key = "Microsoft.KeyVault/vaults/keys";
        assert!(!refused(key, "k"));
        assert!(refused(key, "k.1"));
        assert!(refused(key, &"k".repeat(128)));
        let identity = "Microsoft.ManagedIdentity/userAssignedIdentities";
        assert!(!refused(identity, "id_1-x"));
        assert!(refused(identity, "-id"));
        assert!(refused(identity, "id"));
        assert!(refused(identity, &"i".repeat(129)));
        let workspace = "Microsoft.HealthcareApis/workspaces";
        assert!(!refused(workspace, "default"));
        assert!(refused(workspace, "de-fault"));
        let service = "Microsoft.HealthcareApis/workspaces/dicomservices";
        assert!(!refused(service, "dicom-1"));
        assert!(refused(service, "dicom-"));
        let deployment = "Microsoft.Resources/deployments";
        assert!(!refused(deployment, "seed(1)"));
        assert!(refused(deployment, &"d".repeat(65)));
        let assignment = "Microsoft.Authorization/roleAssignments";
        assert!(!refused(assignment, "3f2504e0-4f89-11d3-9a0c-0305e82c3301"));
        assert!(refused(assignment, "3f2504e04f8911d39a0c0305e82c3301"));
        assert!(refused(assignment, "not-a-guid"));
    }

    #[test]
    fn generic_rule_refuses_what_no_azure_name_holds() {
        let widget = "NS/widgets";
        assert!(!refused(widget, "w 1"));
        assert!(!refused(widget, "ünïcode"));
        for bad in [
            "a:b",
            "a%2Fb",
            "a?b",
            "trailing.",
            "trailing ",
            "zw\u{200B}j",
            "\u{7}",
            ".",
        ] {
            assert!(refused(widget, bad), "{bad:?}");
        }
    }

    #[test]
    fn path_segments() {
        assert!(check_path_segment("resourceGroups").is_ok());
        assert!(check_path_segment("Ärzte").is_ok());
        let long_segment = "s".repeat(261);
        for bad in [
            ".",
            "..",
            "x/y",
            "nul\0",
            "tab\t",
            "rtl\u{202E}x",
            long_segment.as_str(),
        ] {
            let error = check_path_segment(bad).expect_err("refused");
            assert_eq!(error.code(), "InvalidRequestUri");
        }
    }

    #[test]
    fn every_name_in_an_id_is_checked() {
        let good = ResourceId::parse(
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv1/keys/k1",
        )
        .expect("id");
        assert!(check_resource_id(&good).is_ok());
        let bad_group = ResourceId::resource_group("s", "rg.");
        assert!(check_resource_id(&bad_group).is_err());
        let bad_key = ResourceId::parse(
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv1/keys/k_1",
        )
        .expect("id");
        let error = check_resource_id(&bad_key).expect_err("bad key name");
        assert_eq!(error.code(), "KeyNameNotValid");
    }

    #[test]
    fn echoes_are_short_and_printable() {
        assert_eq!(printable("a\u{202E}b\0"), "a?b?");
        assert_eq!(printable(&"x".repeat(100)).len(), 64);
    }
}
