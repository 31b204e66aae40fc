//! The crate's layering, as lib.rs documents it: the list of modules in
//! the crate's doc is in dependency order, lowest first, and every module
//! uses only modules listed before it (so the module graph has no cycle),
//! never the crate root.
//!
//! "Uses" is read from the source: `crate::m`, `super::m` (as many
//! `super::` as reach the crate root) and each `m` of a `{…}` group after
//! them, in every file of a module but its tests (`tests.rs`, and an
//! inline `#[cfg(test)] mod … {`, which comes last in its file here) and
//! comments. Tests may use any module.

// Test code: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// What a path that reaches the crate root names when it is not a module
/// (`super::Progress` from a top-level module, say).
const ROOT: &str = "the crate root";

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level modules: each `m.rs` beside lib.rs, test modules aside.
fn modules() -> BTreeSet<String> {
    fs::read_dir(src())
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().into_string().ok())
        .filter_map(|f| f.strip_suffix(".rs").map(str::to_string))
        .filter(|m| m != "lib" && !m.ends_with("_tests"))
        .collect()
}

/// The modules the crate doc lists, in its order: its `//! - [`m`]…`
/// lines.
fn documented_order() -> Vec<String> {
    fs::read_to_string(src().join("lib.rs"))
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("//! - [`"))
        .filter_map(|l| l.split_once('`').map(|(m, _)| m.to_string()))
        .collect()
}

/// Module `m`'s files that are not tests, each with its depth below the
/// crate root (`m.rs` 1, `m/x.rs` 2).
fn files(m: &str) -> Vec<(PathBuf, usize)> {
    let mut out = vec![(src().join(format!("{m}.rs")), 1)];
    let mut dirs = vec![(src().join(m), 2)];
    while let Some((dir, depth)) = dirs.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            if path.is_dir() {
                dirs.push((path, depth + 1));
            } else if path.extension().is_some_and(|x| x == "rs")
                && path.file_name().is_some_and(|f| f != "tests.rs")
            {
                out.push((path, depth));
            }
        }
    }
    out
}

/// `text` without comment lines and without its inline test module.
fn code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|next| next.trim_start().starts_with("mod ") && next.ends_with('{'))
        {
            break;
        }
        if !t.starts_with("//") {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The top-level modules (or [`ROOT`]) that `code`, in a file `depth`
/// below the crate root, names.
fn uses(code: &str, depth: usize, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find(['s', 'c']) {
        rest = &rest[i..];
        // Only whole words: `super` or `crate` not inside another name.
        let path = if let Some(p) = rest.strip_prefix("crate::") {
            Some(p)
        } else {
            let mut p = rest;
            let mut ups = 0;
            while let Some(q) = p.strip_prefix("super::") {
                p = q;
                ups += 1;
            }
            (ups == depth).then_some(p)
        };
        let before = code.len() - rest.len();
        // The start of a path: not inside a name, not after `::`.
        let whole_word = !code[..before].ends_with("::")
            && code[..before]
                .chars()
                .next_back()
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        rest = &rest[1..];
        let Some(path) = path.filter(|_| whole_word) else {
            continue;
        };
        let names: Vec<&str> = match path.strip_prefix('{') {
            // A group: the first name of each of its top-level entries.
            Some(group) => {
                let mut entries = vec![group];
                let mut level = 0;
                for (j, c) in group.char_indices() {
                    match c {
                        '{' => level += 1,
                        '}' if level == 0 => break,
                        '}' => level -= 1,
                        ',' if level == 0 => entries.push(group[j + 1..].trim_start()),
                        _ => {}
                    }
                }
                entries.into_iter().map(ident).collect()
            }
            None => vec![ident(path)],
        };
        for n in names.into_iter().filter(|n| !n.is_empty() && *n != "self") {
            found.insert(if modules.contains(n) {
                n.to_string()
            } else {
                ROOT.to_string()
            });
        }
    }
    found
}

/// The modules `m` uses, itself aside.
fn dependencies(m: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut deps = BTreeSet::new();
    for (path, depth) in files(m) {
        let text = fs::read_to_string(&path).unwrap();
        deps.extend(uses(&code(&text), depth, modules));
    }
    deps.remove(m);
    deps
}

#[test]
fn the_crate_doc_lists_every_module_once() {
    let order = documented_order();
    let listed: BTreeSet<String> = order.iter().cloned().collect();
    assert_eq!(listed.len(), order.len(), "listed twice: {order:?}");
    assert_eq!(
        listed,
        modules(),
        "lib.rs's module list and the files in src/ differ"
    );
}

#[test]
fn every_module_uses_only_modules_listed_before_it() {
    let modules = modules();
    let order = documented_order();
    let mut problems = Vec::new();
    for (i, m) in order.iter().enumerate() {
        for d in dependencies(m, &modules) {
            match order.iter().position(|o| *o == d) {
                Some(j) if j < i => {}
                Some(_) => problems.push(format!("{m} uses {d}, which lib.rs lists after it")),
                None => problems.push(format!("{m} uses {d}")),
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn uses_are_read_from_paths_and_groups() {
    let modules: BTreeSet<String> = ["plan", "state", "names", "up", "sys"]
        .map(String::from)
        .into();
    let code = code(
        "use super::{plan::{self, Plan}, state};\n\
         use crate::names::PROXY_UID;\n\
         // super::up is only a comment\n\
         let x = super::sys::is_root() && mysuper::up();\n\
         super::Progress::new(\"m\");\n\
         #[cfg(test)]\n\
         mod tests {\n\
         use super::up;\n\
         }\n",
    );
    let want: BTreeSet<String> = ["plan", "state", "names", "sys", ROOT]
        .map(String::from)
        .into();
    assert_eq!(uses(&code, 1, &modules), want);
    // Two levels down, one `super::` is the module itself.
    assert_eq!(
        uses("use super::x;\nuse super::super::up;\n", 2, &modules),
        BTreeSet::from(["up".to_string()])
    );
    // One level down from the root, `super::super::` is not a path of it.
    assert_eq!(
        uses("use super::super::up;\n", 1, &modules),
        BTreeSet::new()
    );
}
