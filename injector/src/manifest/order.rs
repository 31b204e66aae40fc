//! The injected document in the order the user wrote it.
//!
//! Injection works on `serde_json::Value`, whose maps (without serde_json's
//! workspace-wide `preserve_order` feature) sort their keys. [`reorder`]
//! rebuilds the document as an order-keeping `serde_yaml_ng::Value`, guided
//! by the document as read: every subtree the patch left alone is the
//! original one (order, numbers and keys as written); in a changed mapping
//! the original keys keep their order and new keys follow (`name` first,
//! then sorted); in a
//! changed sequence an element finds its original by `name`, else by
//! position.

use serde_json::Value as Json;
use serde_yaml_ng::{Mapping, Number, Value as Yaml};

pub fn reorder(patched: &Json, original: Option<&Yaml>) -> Yaml {
    if let Some(orig) = original {
        if serde_json::to_value(orig).is_ok_and(|o| &o == patched) {
            return orig.clone();
        }
    }
    match patched {
        Json::Null => Yaml::Null,
        Json::Bool(b) => Yaml::Bool(*b),
        Json::Number(n) => Yaml::Number(number(n)),
        Json::String(s) => Yaml::String(s.clone()),
        Json::Array(items) => {
            let orig = original.and_then(Yaml::as_sequence);
            Yaml::Sequence(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| reorder(item, orig.and_then(|o| counterpart(o, item, i))))
                    .collect(),
            )
        }
        Json::Object(map) => {
            let mut out = Mapping::new();
            if let Some(orig) = original.and_then(Yaml::as_mapping) {
                for (k, v) in orig {
                    if let Some(pv) = k.as_str().and_then(|k| map.get(k)) {
                        out.insert(k.clone(), reorder(pv, Some(v)));
                    }
                }
            }
            // A new object (a container, a volume) reads best name first.
            let named_first = map
                .get_key_value("name")
                .into_iter()
                .chain(map.iter().filter(|(k, _)| *k != "name"));
            for (k, v) in named_first {
                let key = Yaml::String(k.clone());
                if !out.contains_key(&key) {
                    out.insert(key, reorder(v, None));
                }
            }
            Yaml::Mapping(out)
        }
    }
}

/// The original element a patched one came from: same `name`, else the
/// same position (when neither has a name).
fn counterpart<'a>(orig: &'a [Yaml], item: &Json, i: usize) -> Option<&'a Yaml> {
    match item.get("name").and_then(Json::as_str) {
        Some(name) => orig
            .iter()
            .find(|o| o.get("name").and_then(Yaml::as_str) == Some(name)),
        None => orig.get(i).filter(|o| o.get("name").is_none()),
    }
}

fn number(n: &serde_json::Number) -> Number {
    if let Some(u) = n.as_u64() {
        Number::from(u)
    } else if let Some(i) = n.as_i64() {
        Number::from(i)
    } else {
        Number::from(n.as_f64().unwrap_or(f64::NAN))
    }
}
