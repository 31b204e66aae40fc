//! The node's network configuration and `trellis-cni`'s place in it: pure
//! functions from a parsed document to the edited one, table-tested in
//! `conflist/tests.rs`. The file work around them is in `node.rs`.
//!
//! A container runtime (containerd, CRI-O, through libcni) reads the files
//! of its configuration directory whose names end in `.conflist`, `.conf` or
//! `.json`, sorts the names byte-wise and sets a pod's network up with the
//! first: [`primary`]. A `.conflist` is a list of plugins run in order, each
//! handed the previous one's result; `trellis-cni` is chained by appending
//! its entry ([`entry`]) to that list ([`chained`]) and taken out again by
//! removing it ([`unchained`]). A single plugin's configuration (a `.conf`,
//! say) has no list to join: [`converted`] turns it into one, as libcni does
//! when it loads such a file.
//!
//! Documents are kept in the order they were written, so a rewritten file
//! differs from the primary plugin's only by our entry. `serde_json::Value`
//! sorts its keys unless serde_json's `preserve_order` feature is on, and
//! that feature is workspace-wide: it would change the injector's output,
//! which relies on sorted maps (`injector/src/manifest/order.rs`). So a
//! document is a [`Doc`], serde_yaml_ng's `Value`, whose mappings keep
//! their order, read and written with serde_json, as the injector already
//! does for JSON manifests.

use serde::Serialize;
use serde_yaml_ng::{Mapping, Value};

#[cfg(test)]
mod tests;

/// A JSON document in the order it was written (see the module doc).
pub(crate) type Doc = Value;

/// The `type` of `trellis-cni`'s entry; the runtime runs the binary of that
/// name in its CNI binary directory.
pub const PLUGIN_TYPE: &str = "trellis-cni";

/// The extensions of the file names the runtime reads (libcni's
/// `ConfFiles(dir, [".conf", ".conflist", ".json"])`).
const EXTENSIONS: [&str; 3] = ["conf", "conflist", "json"];

/// `trellis-cni`'s entry in the list, beside its `type`: what the plugin
/// reads from its configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginConf {
    /// The plugin's kubeconfig, as the node sees it.
    pub kubeconfig: String,
    /// The plugin's log level.
    pub log_level: String,
}

/// A document that is not a network configuration this module can edit.
#[derive(Debug, thiserror::Error)]
pub enum ConfError {
    #[error("not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("not a JSON object")]
    NotAnObject,
    #[error("`plugins` is not a list")]
    PluginsNotAList,
    #[error("neither a `plugins` list nor a plugin `type`")]
    NoType,
}

/// What a network configuration file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A list of plugins (`plugins`): ours joins it.
    List,
    /// One plugin's configuration (`type`, no `plugins`): converted to a list.
    Single,
}

/// Whether the runtime reads a file of this name as a network configuration:
/// its extension (what follows the last `.`, as Go's `filepath.Ext`) is one
/// of `conf`, `conflist`, `json`. Our temporary files end in `.tmp` and our
/// own directory in `.d`, so neither is a candidate.
pub(crate) fn is_candidate(name: &str) -> bool {
    name.rsplit_once('.')
        .is_some_and(|(_, ext)| EXTENSIONS.contains(&ext))
}

/// The file the runtime uses: the byte-wise first candidate name.
pub(crate) fn primary<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    names.into_iter().filter(|n| is_candidate(n)).min()
}

/// The name a single plugin's configuration `name` takes once converted to a
/// list: `10-bridge.conf` → `10-bridge.conflist`.
pub(crate) fn list_name(name: &str) -> String {
    let stem = name.rsplit_once('.').map_or(name, |(stem, _)| stem);
    format!("{stem}.conflist")
}

/// Parses a configuration file's bytes and says what it holds.
pub(crate) fn parse(bytes: &[u8]) -> Result<(Doc, Kind), ConfError> {
    let doc: Doc = serde_json::from_slice(bytes)?;
    let map = doc.as_mapping().ok_or(ConfError::NotAnObject)?;
    let kind = match (map.get("plugins"), map.get("type")) {
        (Some(Value::Sequence(_)), _) => Kind::List,
        (Some(_), _) => return Err(ConfError::PluginsNotAList),
        (None, Some(_)) => Kind::Single,
        (None, None) => return Err(ConfError::NoType),
    };
    Ok((doc, kind))
}

/// The file's text for `doc`: pretty JSON, keys in the document's order,
/// ending in a newline.
pub(crate) fn render(doc: &Doc) -> Result<Vec<u8>, ConfError> {
    let mut bytes = serde_json::to_vec_pretty(doc)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Our entry: `{"type": "trellis-cni", "kubeconfig": …, "logLevel": …}`
/// (that it reads back as a [`PluginConf`] is tested).
pub(crate) fn entry(conf: &PluginConf) -> Doc {
    let mut map = Mapping::new();
    map.insert("type".into(), PLUGIN_TYPE.into());
    map.insert("kubeconfig".into(), conf.kubeconfig.as_str().into());
    map.insert("logLevel".into(), conf.log_level.as_str().into());
    Value::Mapping(map)
}

/// `list` with our entry chained, or `None` when it already is, exactly.
///
/// The entry goes last, after the primary plugin and whatever it chains
/// (portmap, bandwidth …), so the pod's interfaces and addresses exist when
/// the capture rules are written. An entry of ours already there, but
/// different (a new kubeconfig path, a new log level), is replaced where it
/// stands; a second one is dropped. Every other field is left as it is.
pub(crate) fn chained(list: &Doc, entry: &Doc) -> Result<Option<Doc>, ConfError> {
    let plugins = plugins(list)?;
    // The first of ours, or the end: as many others come before it.
    let at = plugins.iter().position(is_ours).unwrap_or(plugins.len());
    let mut edited: Vec<Doc> = plugins.iter().filter(|p| !is_ours(p)).cloned().collect();
    edited.insert(at, entry.clone());
    Ok((edited != *plugins).then(|| with_plugins(list, edited)))
}

/// `list` without our entry, or `None` when it holds none.
pub(crate) fn unchained(list: &Doc) -> Result<Option<Doc>, ConfError> {
    let plugins = plugins(list)?;
    if !plugins.iter().any(is_ours) {
        return Ok(None);
    }
    let kept = plugins.iter().filter(|p| !is_ours(p)).cloned().collect();
    Ok(Some(with_plugins(list, kept)))
}

/// A single plugin's configuration as a list of that one plugin:
/// `{"cniVersion", "name", "plugins": [the rest]}`. A `cniVersion` or `name`
/// the original lacks is not invented.
pub(crate) fn converted(single: &Doc) -> Result<Doc, ConfError> {
    let mut plugin = single.as_mapping().ok_or(ConfError::NotAnObject)?.clone();
    let mut list = Mapping::new();
    for key in ["cniVersion", "name"] {
        if let Some(v) = plugin.shift_remove(key) {
            list.insert(key.into(), v);
        }
    }
    list.insert(
        "plugins".into(),
        Value::Sequence(vec![Value::Mapping(plugin)]),
    );
    Ok(Value::Mapping(list))
}

/// Whether a plugin entry is ours.
fn is_ours(plugin: &Doc) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

fn plugins(list: &Doc) -> Result<&Vec<Doc>, ConfError> {
    match list.get("plugins") {
        Some(Value::Sequence(plugins)) => Ok(plugins),
        Some(_) => Err(ConfError::PluginsNotAList),
        None => Err(ConfError::NoType),
    }
}

/// `list` with its `plugins` replaced, in the same place among its keys.
fn with_plugins(list: &Doc, plugins: Vec<Doc>) -> Doc {
    let mut edited = list.clone();
    if let Some(map) = edited.as_mapping_mut() {
        map.insert("plugins".into(), Value::Sequence(plugins));
    }
    edited
}
