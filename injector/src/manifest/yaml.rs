//! A small YAML writer for the documents `trellis inject` rewrote.
//!
//! Why not `serde_yaml_ng::to_string`: it decides quoting by YAML 1.2
//! rules, so strings such as `"on"`, `"yes"`, `"1_000"` or `"0x1F"` come out
//! plain, and Kubernetes' reader (sigs.k8s.io/yaml → go-yaml v2, YAML 1.1
//! typing plus Go's number syntax) turns them into booleans and numbers.
//! This writer quotes every string that a YAML 1.1 reader, a YAML 1.2 core
//! reader, or go-yaml v2 could read as anything but that string
//! ([`needs_quotes`]); it errs on the side of quoting.
//!
//! Style: block mappings and sequences (sequences under a key are not
//! indented, as `kubectl` writes them), keys in the order of the
//! [`Mapping`], multi-line strings as literal blocks (`|`) when that is
//! exact, otherwise double-quoted with escapes.

use serde_yaml_ng::{Mapping, Number, Value};

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum EmitError {
    #[error("the document has a YAML tag ({0}), which trellis inject cannot write back")]
    Tag(String),
    #[error(
        "the document has a mapping key that is a {0}, which trellis inject cannot write back"
    )]
    Key(&'static str),
}

/// One YAML document (without `---`), ending with a newline.
pub fn to_yaml(doc: &Value) -> Result<String, EmitError> {
    let mut out = String::new();
    node(&mut out, doc, 0, After::Start)?;
    Ok(out)
}

/// Whether a one-line string must be quoted to be read back as the same
/// string. True for anything a YAML 1.1 reader resolves to another type
/// (booleans `y`/`n`/`yes`/`no`/`on`/`off`/`true`/`false` in any case,
/// null `~`/`null`, ints in binary, octal `012`, hex, sexagesimal `1:20`
/// and with `_`, floats such as `1.5`, `.inf`, `.nan`, timestamps, `<<`,
/// `=`), for YAML 1.2 and Go extras (`0o17`, `1e3`), for strings a plain
/// scalar cannot hold (indicators, `: `, ` #`, edge spaces, control
/// characters), and for the empty string.
pub fn needs_quotes(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return true;
    };
    let second = s.chars().nth(1);
    s.chars().any(|c| !plain_char(c))
        || s.starts_with(' ')
        || s.ends_with(' ')
        || "!&*|>'\"%@`#,[]{}".contains(first)
        || ("-?:".contains(first) && second.is_none_or(|c| c == ' '))
        || s.starts_with("---")
        || s.starts_with("...")
        || s.contains(": ")
        || s.contains(" #")
        || s.ends_with(':')
        || reserved_word(s)
        || number_like(s)
}

/// Words that YAML 1.1 or 1.2 read as booleans, null, or the merge and
/// value keys; compared without case (quoting too much is harmless).
fn reserved_word(s: &str) -> bool {
    const WORDS: [&str; 12] = [
        "y", "n", "yes", "no", "true", "false", "on", "off", "null", "~", "<<", "=",
    ];
    WORDS.iter().any(|w| w.eq_ignore_ascii_case(s))
}

/// A (signed) digit or dot followed only by characters that numbers,
/// sexagesimals and timestamps are made of: quoted, because one of the
/// readers may take it for a number or a date. `10m`, `50Mi` or `1 day`
/// stay plain. `0.1.0` and `127.0.0.1:7140` are quoted too: PyYAML and
/// go-yaml keep them strings, but the YAML 1.1 spec's own float pattern
/// (`[-+]?([0-9][0-9_]*)?\.[0-9.]*([eE][-+][0-9]+)?`) admits several dots.
fn number_like(s: &str) -> bool {
    let t = s.strip_prefix(['+', '-']).unwrap_or(s);
    match t.chars().next() {
        Some('.') => true,
        Some(c) if c.is_ascii_digit() => t
            .chars()
            .all(|c| c.is_ascii_hexdigit() || "_xXoObB.:+-eEtTzZ ".contains(c)),
        _ => false,
    }
}

/// Characters a plain or single-quoted scalar may hold: printable, no
/// line breaks (YAML 1.1 counts U+0085, U+2028 and U+2029 as breaks), no
/// tab, no byte-order mark.
fn plain_char(c: char) -> bool {
    matches!(c, ' '..='~' | '\u{A0}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
        && !matches!(c, '\u{2028}' | '\u{2029}' | '\u{FEFF}')
}

/// How a string is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    Plain,
    Single,
    Double,
    /// `|`, with the chomping indicator its trailing newlines need.
    Literal,
}

fn style(s: &str, key: bool) -> Style {
    if !needs_quotes(s) {
        Style::Plain
    } else if s.chars().all(plain_char) {
        Style::Single
    } else if !key && literal_ok(s) {
        Style::Literal
    } else {
        Style::Double
    }
}

/// A literal block reads back exactly when the text has line breaks, no
/// other non-printable character, and does not start with white space
/// (which would confuse the reader's indentation detection).
fn literal_ok(s: &str) -> bool {
    s.contains('\n')
        && !s.starts_with([' ', '\t', '\n'])
        && s.chars().all(|c| c == '\n' || c == '\t' || plain_char(c))
}

fn single_quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn double_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\0' => out.push_str("\\0"),
            c if plain_char(c) => out.push(c),
            c if u32::from(c) <= 0xFF => out.push_str(&format!("\\x{:02X}", u32::from(c))),
            c if u32::from(c) <= 0xFFFF => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push_str(&format!("\\U{:08X}", u32::from(c))),
        }
    }
    out.push('"');
    out
}

/// A number as YAML 1.1 reads it back: floats always have a dot, and an
/// exponent has a sign (`1.0e+300`, not `1e300`, which YAML 1.1 reads as
/// a string).
fn number(n: &Number) -> String {
    let Some(f) = n.as_f64().filter(|_| n.is_f64()) else {
        return n.to_string();
    };
    if f.is_nan() {
        return ".nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { ".inf" } else { "-.inf" }.into();
    }
    let s = format!("{f:?}");
    let (mantissa, exponent) = match s.split_once('e') {
        Some((m, e)) => (m.to_string(), Some(e)),
        None => (s.clone(), None),
    };
    let mantissa = if mantissa.contains('.') {
        mantissa
    } else {
        format!("{mantissa}.0")
    };
    match exponent {
        Some(e) if e.starts_with('-') => format!("{mantissa}e{e}"),
        Some(e) => format!("{mantissa}e+{e}"),
        None => mantissa,
    }
}

/// What the line holds before the node: nothing (document start), `key:`
/// or `-`. `indent` is the column of that key or dash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    Start,
    Key,
    Dash,
}

fn node(out: &mut String, v: &Value, indent: usize, after: After) -> Result<(), EmitError> {
    let sep = if after == After::Start { "" } else { " " };
    match v {
        Value::Mapping(m) if !m.is_empty() => match after {
            After::Start => entries(out, m, 0, false),
            After::Key => {
                out.push('\n');
                entries(out, m, indent + 2, false)
            }
            After::Dash => {
                out.push(' ');
                entries(out, m, indent + 2, true)
            }
        },
        Value::Sequence(s) if !s.is_empty() => match after {
            After::Start => items(out, s, 0, false),
            After::Key => {
                out.push('\n');
                items(out, s, indent, false)
            }
            After::Dash => {
                out.push(' ');
                items(out, s, indent + 2, true)
            }
        },
        Value::String(s) if style(s, false) == Style::Literal => {
            literal(out, sep, s, indent + 2);
            Ok(())
        }
        // Scalars and empty collections.
        other => {
            let text = inline(other)?;
            out.push_str(sep);
            out.push_str(&text);
            out.push('\n');
            Ok(())
        }
    }
}

fn entries(out: &mut String, m: &Mapping, col: usize, first_inline: bool) -> Result<(), EmitError> {
    for (i, (k, v)) in m.iter().enumerate() {
        if i > 0 || !first_inline {
            pad(out, col);
        }
        out.push_str(&key(k)?);
        out.push(':');
        node(out, v, col, After::Key)?;
    }
    Ok(())
}

fn items(out: &mut String, s: &[Value], col: usize, first_inline: bool) -> Result<(), EmitError> {
    for (i, v) in s.iter().enumerate() {
        if i > 0 || !first_inline {
            pad(out, col);
        }
        out.push('-');
        node(out, v, col, After::Dash)?;
    }
    Ok(())
}

fn pad(out: &mut String, col: usize) {
    out.extend(std::iter::repeat_n(' ', col));
}

fn key(k: &Value) -> Result<String, EmitError> {
    match k {
        Value::String(s) => Ok(string(s, true)),
        Value::Number(_) | Value::Bool(_) => inline(k),
        Value::Null => Err(EmitError::Key("null")),
        Value::Sequence(_) => Err(EmitError::Key("sequence")),
        Value::Mapping(_) => Err(EmitError::Key("mapping")),
        Value::Tagged(t) => Err(EmitError::Tag(t.tag.to_string())),
    }
}

/// A scalar, or an empty collection (`node` writes the others as blocks),
/// on one line.
fn inline(v: &Value) -> Result<String, EmitError> {
    Ok(match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => number(n),
        Value::String(s) => string(s, true),
        Value::Tagged(t) => return Err(EmitError::Tag(t.tag.to_string())),
        Value::Sequence(_) => "[]".into(),
        Value::Mapping(_) => "{}".into(),
    })
}

/// `key` forbids the literal style (keys stay on one line).
fn string(s: &str, one_line: bool) -> String {
    match style(s, one_line) {
        Style::Plain => s.to_string(),
        Style::Single => single_quoted(s),
        Style::Double | Style::Literal => double_quoted(s),
    }
}

fn literal(out: &mut String, sep: &str, s: &str, col: usize) {
    let body = s.trim_end_matches('\n');
    let chomp = match s.len() - body.len() {
        0 => "-",
        1 => "",
        _ => "+",
    };
    out.push_str(sep);
    out.push('|');
    out.push_str(chomp);
    out.push('\n');
    for l in s.strip_suffix('\n').unwrap_or(s).split('\n') {
        if !l.is_empty() {
            pad(out, col);
            out.push_str(l);
        }
        out.push('\n');
    }
}
