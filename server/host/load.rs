//! Deciding whether a file is a plugin this server can run, before and after
//! loading it. The checks run in a fixed order and stop at the first failure
//! with the path and the found and expected values: the modes of the file
//! and its folder, the symbol table, (the loader), the descriptor; at
//! start-up, the store's secret names.

use std::path::{Path, PathBuf};

use iapd_sdk_plugin::abi;

use crate::config::ConfigError;

/// Why a plugin was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Every user may write the file or its folder, so any of them could
    /// change the code the server runs.
    #[error("plugin `{path}`: {what} is writable by every user (mode {mode:04o}); only its owner may write it")]
    WorldWritable {
        /// The file.
        path: PathBuf,
        /// `the file` or `its folder `<folder>``.
        what: String,
        /// The permission bits found.
        mode: u32,
    },
    /// The file could not be read to check its symbols.
    #[error("plugin `{path}`: cannot read the file: {source}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a shared library this server can inspect.
    #[error("plugin `{path}`: not a shared library: {reason}")]
    NotALibrary {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The library was built for another ABI major; it was not loaded.
    #[error(
        "plugin `{path}`: built for plugin ABI v{found_major} (exports `{found_symbol}`); this server supports v{expected_major} (`{expected_symbol}`); it was not loaded"
    )]
    ForeignMajor {
        /// The file.
        path: PathBuf,
        /// The major the symbol names.
        found_major: String,
        /// The symbol found.
        found_symbol: String,
        /// This host's major.
        expected_major: u16,
        /// The symbol this host needs.
        expected_symbol: &'static str,
    },
    /// The library has no entry symbol at all.
    #[error("plugin `{path}`: missing symbol `{expected_symbol}`: not an iapd plugin; it was not loaded")]
    MissingSymbol {
        /// The file.
        path: PathBuf,
        /// The symbol this host needs.
        expected_symbol: &'static str,
    },
    /// The dynamic loader refused the library.
    #[error("plugin `{path}`: the dynamic loader refused it: {reason}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The loader's message.
        reason: String,
    },
    /// The descriptor does not meet this host's requirements.
    #[error("plugin `{path}`{plugin}: {problem}")]
    Descriptor {
        /// The file.
        path: PathBuf,
        /// ` (name version, build)` when known.
        plugin: String,
        /// What is wrong, with found and expected values.
        problem: String,
    },
    /// The store's configuration does not fit the plugin.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The plugin could not create its instance.
    #[error("plugin `{path}` ({name}) failed to start: {message}")]
    Init {
        /// The file.
        path: PathBuf,
        /// The plugin's name.
        name: String,
        /// The plugin's message (with secrets redacted).
        message: String,
    },
}

/// Refuses a plugin file, or a plugin folder, that every user may write. The
/// first check: it runs before the file is read.
#[cfg(unix)]
pub(crate) fn check_modes(path: &Path) -> Result<(), LoadError> {
    use std::os::unix::fs::PermissionsExt;
    let folder = path.parent().unwrap_or(Path::new("/"));
    for (target, what) in [(path, "the file".to_owned()), (folder, format!("its folder `{}`", folder.display()))] {
        let mode = std::fs::metadata(target)
            .map_err(|source| LoadError::Unreadable { path: path.to_owned(), source })?
            .permissions()
            .mode()
            & 0o7777;
        if mode & 0o002 != 0 {
            return Err(LoadError::WorldWritable { path: path.to_owned(), what, mode });
        }
    }
    Ok(())
}

/// Without Unix permission bits there is no world-writable mode to refuse.
#[cfg(not(unix))]
pub(crate) fn check_modes(_path: &Path) -> Result<(), LoadError> {
    Ok(())
}

/// Reads the library's dynamic symbol table, without loading it, and checks
/// that it exports this major's entry symbol. A library built for another
/// major is refused here, so none of its code (initializers included) runs.
pub(crate) fn check_symbols(path: &Path) -> Result<(), LoadError> {
    use object::Object;
    let data = std::fs::read(path).map_err(|source| LoadError::Unreadable { path: path.to_owned(), source })?;
    let file = object::File::parse(&*data)
        .map_err(|err| LoadError::NotALibrary { path: path.to_owned(), reason: err.to_string() })?;
    let exports =
        file.exports().map_err(|err| LoadError::NotALibrary { path: path.to_owned(), reason: err.to_string() })?;
    let mut other_major = None;
    for export in exports {
        let Ok(name) = std::str::from_utf8(export.name()) else { continue };
        // Mach-O prefixes C symbols with an underscore.
        let name =
            if file.format() == object::BinaryFormat::MachO { name.strip_prefix('_').unwrap_or(name) } else { name };
        if name == abi::ENTRY_SYMBOL {
            return Ok(());
        }
        if let Some(major) = name.strip_prefix(abi::ENTRY_SYMBOL_PREFIX)
            && !major.is_empty()
            && major.bytes().all(|b| b.is_ascii_digit())
        {
            other_major = Some((major.to_owned(), name.to_owned()));
        }
    }
    Err(match other_major {
        Some((found_major, found_symbol)) => LoadError::ForeignMajor {
            path: path.to_owned(),
            found_major,
            found_symbol,
            expected_major: abi::ABI_MAJOR,
            expected_symbol: abi::ENTRY_SYMBOL,
        },
        None => LoadError::MissingSymbol { path: path.to_owned(), expected_symbol: abi::ENTRY_SYMBOL },
    })
}

/// The descriptor's values, copied into host memory.
#[derive(Debug, Clone)]
pub struct DescriptorInfo {
    /// `magic`.
    pub magic: u32,
    /// `abi_major`.
    pub abi_major: u16,
    /// `abi_minor`.
    pub abi_minor: u16,
    /// `struct_size`.
    pub struct_size: u32,
    /// `min_host_minor`.
    pub min_host_minor: u16,
    /// `flags`.
    pub flags: u16,
    /// `name`, if valid UTF-8.
    pub name: Option<String>,
    /// `version`.
    pub version: String,
    /// `build_info`.
    pub build_info: String,
    /// `capabilities`.
    pub capabilities: u64,
    /// Whether all five 1.0 entry points are set.
    pub entry_points_present: bool,
}

/// Checks a descriptor in the fixed order: magic, major, size, host minor,
/// flags, entry points, name.
pub(crate) fn check_descriptor(path: &Path, info: &DescriptorInfo) -> Result<(), LoadError> {
    let refuse = |problem: String| LoadError::Descriptor {
        path: path.to_owned(),
        plugin: info
            .name
            .as_ref()
            .filter(|_| info.magic == abi::PLUGIN_MAGIC)
            .map(|name| format!(" ({name} {}, {})", info.version, info.build_info))
            .unwrap_or_default(),
        problem,
    };
    if info.magic != abi::PLUGIN_MAGIC {
        return Err(refuse(format!("bad magic: found {:#010x}, expected {:#010x}", info.magic, abi::PLUGIN_MAGIC)));
    }
    if info.abi_major != abi::ABI_MAJOR {
        return Err(refuse(format!("ABI major mismatch: found {}, expected {}", info.abi_major, abi::ABI_MAJOR)));
    }
    if info.struct_size < abi::DESCRIPTOR_SIZE_1_0 {
        return Err(refuse(format!(
            "descriptor too small: found {} bytes, expected at least {}",
            info.struct_size,
            abi::DESCRIPTOR_SIZE_1_0
        )));
    }
    if info.min_host_minor > abi::ABI_MINOR {
        return Err(refuse(format!(
            "needs host ABI >= {}.{}, this server provides {}.{}",
            abi::ABI_MAJOR,
            info.min_host_minor,
            abi::ABI_MAJOR,
            abi::ABI_MINOR
        )));
    }
    if info.flags & abi::FLAG_THREAD_SAFE == 0 {
        return Err(refuse(format!("flag THREAD_SAFE missing: found flags {:#06x}", info.flags)));
    }
    if !info.entry_points_present {
        return Err(refuse("a required 1.0 entry point is null".to_owned()));
    }
    match &info.name {
        Some(name) if valid_name(name) => Ok(()),
        Some(name) => Err(refuse(format!("name `{name}` is not [a-z0-9_-]{{1,64}}"))),
        None => Err(refuse("name is null or not UTF-8".to_owned())),
    }
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Refuses configured secrets the plugin does not declare (`PluginInfo.secrets`):
/// a misspelt name would otherwise be accepted and never read.
pub(crate) fn check_secrets<'a>(
    store_id: &str,
    configured: impl IntoIterator<Item = &'a String>,
    declared: &[String],
) -> Result<(), LoadError> {
    let Some(unknown) = configured.into_iter().find(|name| !declared.contains(name)) else { return Ok(()) };
    let reason = if declared.is_empty() {
        "the plugin declares no secrets".to_owned()
    } else {
        let names: Vec<String> = declared.iter().map(|name| format!("`{name}`")).collect();
        format!("the plugin declares only {}", names.join(", "))
    };
    Err(ConfigError::new(format!("stores.{store_id}.secrets.{unknown}"), reason).into())
}
