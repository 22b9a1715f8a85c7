//! The root key's protector as the operator names it with flags (`hds up`, `hds backup`,
//! `hds root-key protect`), built into an `hds_crypto::root_at_rest::Protector`.
//!
//! Every check that can fail (a data dir holding the key in another form, a missing token, a
//! wrong PIN, a missing wrapping key) runs before anything is written; moving the key between
//! forms is `hds root-key protect` alone.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use hds_crypto::root::RootKey;
use hds_crypto::root_at_rest::{self, Form, Protector};
use hds_keyvault::{PinSource, Pkcs11Config, Pkcs11RootKeyWrapper, WrappingKeyCreation};
use zeroize::Zeroizing;

/// How the root key is kept at rest. Without any of these flags it is the plaintext
/// `root.key` (the laptop default).
#[derive(Debug, Clone, Args)]
pub struct RootKeyOptions {
    /// A 0600 file holding a passphrase: the root key is kept only sealed under it
    /// (`root.key.sealed`, Argon2id + AES-256-GCM). A wrong passphrase stops the start before
    /// anything is written.
    #[arg(long, env = "HDS_ROOT_KEY_PASSPHRASE_FILE")]
    pub root_key_passphrase_file: Option<PathBuf>,

    /// A PKCS#11 module (e.g. /usr/lib/softhsm/libsofthsm2.so) whose token wraps the root key
    /// (`root.key.wrapped`, AES-256-GCM inside the token with a non-extractable key). A missing
    /// token, wrong PIN or wrong key stops the start before anything is written.
    #[arg(long, env = "HDS_ROOT_KEY_PKCS11_MODULE")]
    pub root_key_pkcs11_module: Option<PathBuf>,

    /// The label of the token that wraps the root key.
    #[arg(long, env = "HDS_ROOT_KEY_PKCS11_TOKEN", default_value = "hds")]
    pub root_key_pkcs11_token: String,

    /// The label of the AES key in that token. Generated in the token only for a data dir
    /// without a root key (or by `hds root-key protect`); otherwise it must exist.
    #[arg(long, env = "HDS_ROOT_KEY_PKCS11_KEY", default_value = "hds-root-key")]
    pub root_key_pkcs11_key: String,

    /// A 0600 file holding the token's user PIN.
    #[arg(long, env = "HDS_ROOT_KEY_PKCS11_PIN_FILE")]
    pub root_key_pkcs11_pin_file: Option<PathBuf>,
}

/// `hds root-key ...`.
#[derive(Debug, Subcommand)]
pub enum RootKeyCommand {
    /// Move the root key of a stopped data dir into another form: from plaintext to a
    /// passphrase or a token, or between those two. Give the flags of the form it is in now
    /// (none for plaintext) and of the form to move it to. The old file is removed once the
    /// new one is written and opens to the same key.
    Protect(ProtectOptions),
}

/// Options of `hds root-key protect`.
#[derive(Debug, Args)]
pub struct ProtectOptions {
    /// The data dir whose root key to move (stop `hds up` first).
    #[arg(long, env = "HDS_DATA_DIR")]
    pub data_dir: PathBuf,

    /// The protectors: the current one and the one to move to.
    #[command(flatten)]
    pub root_key: RootKeyOptions,
}

/// A protector with the secrets it holds (the passphrase, the token session).
enum HeldProtector {
    Plaintext,
    Passphrase(Zeroizing<Vec<u8>>),
    Token(Box<Pkcs11RootKeyWrapper>),
}

impl HeldProtector {
    fn protector(&self) -> Protector<'_> {
        match self {
            HeldProtector::Plaintext => Protector::Plaintext,
            HeldProtector::Passphrase(passphrase) => Protector::Passphrase(passphrase),
            HeldProtector::Token(wrapper) => Protector::Wrapper(wrapper.as_ref()),
        }
    }
}

impl RootKeyOptions {
    /// The protected forms these flags name.
    fn named_forms(&self) -> Vec<Form> {
        let mut forms = Vec::new();
        if self.root_key_passphrase_file.is_some() {
            forms.push(Form::Passphrase);
        }
        if self.root_key_pkcs11_module.is_some() {
            forms.push(Form::Wrapped);
        }
        forms
    }

    /// The one form `hds up` and `hds backup` use: plaintext without flags.
    fn single_form(&self) -> anyhow::Result<Form> {
        match self.named_forms().as_slice() {
            [] => Ok(Form::Plaintext),
            [form] => Ok(*form),
            _ => bail!(
                "give either --root-key-passphrase-file or --root-key-pkcs11-module, not both (to move the key from one to the other: hds root-key protect)"
            ),
        }
    }

    /// Opens the protector of `form` (reads the passphrase, logs in to the token).
    fn hold(&self, form: Form, creation: WrappingKeyCreation) -> anyhow::Result<HeldProtector> {
        match form {
            Form::Plaintext => Ok(HeldProtector::Plaintext),
            Form::Passphrase => {
                let file = self
                    .root_key_passphrase_file
                    .as_deref()
                    .context("--root-key-passphrase-file is missing")?;
                Ok(HeldProtector::Passphrase(crate::recovery::passphrase(
                    Some(file),
                )?))
            }
            Form::Wrapped => {
                let module_path = self
                    .root_key_pkcs11_module
                    .clone()
                    .context("--root-key-pkcs11-module is missing")?;
                let pin_file = self
                    .root_key_pkcs11_pin_file
                    .clone()
                    .context("--root-key-pkcs11-module needs --root-key-pkcs11-pin-file")?;
                let config = Pkcs11Config {
                    module_path,
                    token_label: self.root_key_pkcs11_token.clone(),
                    user_pin: PinSource::File(pin_file),
                };
                let wrapper =
                    Pkcs11RootKeyWrapper::open(&config, &self.root_key_pkcs11_key, creation)
                        .context("opening the root key's PKCS#11 token")?;
                Ok(HeldProtector::Token(Box::new(wrapper)))
            }
        }
    }
}

/// The flags that name `form`, for messages.
fn flags_of(form: Form) -> &'static str {
    match form {
        Form::Plaintext => "no root-key flag",
        Form::Passphrase => "--root-key-passphrase-file FILE",
        Form::Wrapped => {
            "--root-key-pkcs11-module MODULE --root-key-pkcs11-token LABEL --root-key-pkcs11-key LABEL --root-key-pkcs11-pin-file FILE"
        }
    }
}

/// The forms of the root key in `data_dir` (none when it does not exist yet).
fn held_forms(data_dir: &Path) -> anyhow::Result<Vec<Form>> {
    if !data_dir.exists() {
        return Ok(Vec::new());
    }
    root_at_rest::held_forms(data_dir)
        .with_context(|| format!("looking for the root key in {}", data_dir.display()))
}

/// The protector of `hds up`, opened (token logged in, passphrase read) and checked against
/// what `data_dir` holds, before the data dir is created or written.
pub struct UpProtector {
    held: HeldProtector,
    form: Form,
}

/// Checks the flags against the data dir and opens the protector: a data dir that holds the
/// key in another form is refused here, naming the flags it needs and the command that moves
/// it, so a wrong flag never makes a second key.
pub fn protector_for_up(data_dir: &Path, options: &RootKeyOptions) -> anyhow::Result<UpProtector> {
    let form = options.single_form()?;
    let held = held_forms(data_dir)?;
    if !held.is_empty() && !held.contains(&form) {
        let other = held
            .iter()
            .copied()
            .find(|held_form| *held_form != Form::Plaintext)
            .unwrap_or(Form::Plaintext);
        refuse_other_form(data_dir, other, form)?;
    }
    let creation = if held.is_empty() {
        WrappingKeyCreation::GenerateIfMissing
    } else {
        WrappingKeyCreation::MustExist
    };
    Ok(UpProtector {
        held: options.hold(form, creation)?,
        form,
    })
}

fn refuse_other_form(data_dir: &Path, held: Form, asked: Form) -> anyhow::Result<()> {
    let how_to_move = if asked == Form::Plaintext {
        String::new()
    } else {
        let current_flags = if held == Form::Plaintext {
            String::new()
        } else {
            format!("{} ", flags_of(held))
        };
        format!(
            "; to have it {} instead, stop hds and run: hds root-key protect --data-dir {} {current_flags}{}",
            asked.describe(),
            data_dir.display(),
            flags_of(asked)
        )
    };
    bail!(
        "the root key of {} is {} ({}): start with {}{how_to_move}",
        data_dir.display(),
        held.describe(),
        held.file_name(),
        flags_of(held),
    )
}

impl UpProtector {
    /// Opens the root key of `data_dir`, or creates it in this form when it has none.
    pub fn open_or_create(&self, data_dir: &Path) -> anyhow::Result<RootKey> {
        let root_key =
            root_at_rest::open_or_create(data_dir, self.held.protector()).with_context(|| {
                format!(
                    "opening the root key {}",
                    data_dir.join(self.form.file_name()).display()
                )
            })?;
        warn_of_plaintext(data_dir, self.form);
        Ok(root_key)
    }
}

/// The root key of an existing data dir, in the form the flags name (`hds backup`).
pub fn open_existing(data_dir: &Path, options: &RootKeyOptions) -> anyhow::Result<RootKey> {
    let form = options.single_form()?;
    let held = held_forms(data_dir)?;
    if !held.contains(&form) {
        match held.first() {
            Some(other) => bail!(
                "the root key of {} is {} ({}): give {}",
                data_dir.display(),
                other.describe(),
                other.file_name(),
                flags_of(*other)
            ),
            None => bail!("{} holds no root key", data_dir.display()),
        }
    }
    let protector = options.hold(form, WrappingKeyCreation::MustExist)?;
    protector.protector().read(data_dir).with_context(|| {
        format!(
            "opening the root key {}",
            data_dir.join(form.file_name()).display()
        )
    })
}

/// `hds root-key protect`: the current form is the protected one held whose flags are given
/// (else the plaintext file); the target is the one named form not held yet.
pub fn protect(options: ProtectOptions) -> anyhow::Result<()> {
    let data_dir = &options.data_dir;
    let held = held_forms(data_dir)?;
    if held.is_empty() {
        bail!(
            "{} holds no root key (start hds once, or restore a backup, first)",
            data_dir.display()
        );
    }
    let named = options.root_key.named_forms();
    let targets: Vec<Form> = named
        .iter()
        .copied()
        .filter(|form| !held.contains(form))
        .collect();
    let target = match targets.as_slice() {
        [target] => *target,
        [] if named.is_empty() => bail!(
            "name the form to move the root key to: {} or {}",
            flags_of(Form::Passphrase),
            flags_of(Form::Wrapped)
        ),
        [] => bail!(
            "the root key of {} is already {}",
            data_dir.display(),
            held.iter()
                .find(|form| named.contains(form))
                .map(|form| form.describe())
                .unwrap_or("protected")
        ),
        _ => bail!(
            "give the flags of one form to move the root key to, and those of its current form"
        ),
    };
    let source = held
        .iter()
        .copied()
        .find(|form| *form != Form::Plaintext && named.contains(form))
        .or_else(|| held.contains(&Form::Plaintext).then_some(Form::Plaintext));
    let Some(source) = source else {
        let current = held[0];
        bail!(
            "the root key of {} is {}: give {} too, so it can be opened",
            data_dir.display(),
            current.describe(),
            flags_of(current)
        );
    };
    let from = options
        .root_key
        .hold(source, WrappingKeyCreation::MustExist)?;
    let to = options
        .root_key
        .hold(target, WrappingKeyCreation::GenerateIfMissing)?;
    root_at_rest::migrate(data_dir, from.protector(), to.protector()).with_context(|| {
        format!(
            "moving the root key of {} from {} to {}",
            data_dir.display(),
            source.file_name(),
            target.file_name()
        )
    })?;
    tracing::info!(
        data_dir = %data_dir.display(),
        from = source.file_name(),
        to = target.file_name(),
        "the root key is now {}; start hds with {}",
        to.protector().describe(),
        flags_of(target)
    );
    warn_of_plaintext(data_dir, target);
    Ok(())
}

/// A protected key with its plaintext file still beside it protects nothing.
fn warn_of_plaintext(data_dir: &Path, form: Form) {
    let plaintext = data_dir.join(root_at_rest::PLAINTEXT_FILE);
    if form != Form::Plaintext && plaintext.exists() {
        tracing::warn!(
            path = %plaintext.display(),
            "the root key is also in plaintext: move it with hds root-key protect, or delete that file once a backup holds the key"
        );
    }
}
