//! Request paths as the application will read them: normalised before the
//! inbound policy looks at them, and forwarded normalised, so that what is
//! authorized is what the application serves.
//!
//! [`normalize`] takes the path of an origin-form request target (no query)
//! and:
//!
//! 1. decodes percent-escapes of unreserved characters (`A–Z a–z 0–9 - . _
//!    ~`; RFC 3986 §2.3 says they mean the same decoded) and upper-cases the
//!    hex digits of the escapes it keeps;
//! 2. removes dot segments (`.` and `..`, RFC 3986 §5.2.4); `..` above the
//!    root stays at the root;
//! 3. refuses, as ambiguous, what servers disagree on: an encoded `/`
//!    (`%2F`), `\` (`%5C`) or `;` (`%3B`); a literal `\`; a dot segment
//!    carrying parameters (`..;x`, `.;`), which some servers read as `..`;
//!    an encoded NUL or control character, or a malformed escape.
//!
//! Anything else (reserved characters, other escapes such as `%25` or
//! `%20`, empty segments) is kept as it was: normalisation only removes
//! differences that cannot change what the path means to a conforming
//! server.

use std::borrow::Cow;

/// Why a path was refused (a short reason: the 400 response's body and a
/// log field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path does not start with '/'")]
    NotAbsolute,
    #[error("the path has a malformed percent-escape")]
    BadEscape,
    #[error("the path encodes '/', '\\' or ';' (%2F, %5C, %3B)")]
    EncodedDelimiter,
    #[error("the path has a backslash")]
    Backslash,
    #[error("the path has a dot segment with parameters (such as '..;')")]
    DotSegmentParameters,
    #[error("the path encodes a control character")]
    EncodedControl,
}

impl PathError {
    /// The reason as a metric label and log value.
    pub fn reason(self) -> &'static str {
        match self {
            Self::NotAbsolute => "path_not_absolute",
            Self::BadEscape => "path_bad_escape",
            Self::EncodedDelimiter => "path_encoded_delimiter",
            Self::Backslash => "path_backslash",
            Self::DotSegmentParameters => "path_dot_segment_parameters",
            Self::EncodedControl => "path_encoded_control",
        }
    }
}

/// The normalised form of `path` (borrowed when it is already normal, the
/// common case: no allocation).
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let bytes = path.as_bytes();
    if !bytes
        .iter()
        .any(|&b| matches!(b, b'%' | b'.' | b'\\' | b';'))
    {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    let mut out = String::with_capacity(decoded.len());
    let mut segments: Vec<&str> = Vec::new();
    // Skip the leading '/': segments are what lies between slashes.
    let rest = &decoded[1..];
    let parts: Vec<&str> = rest.split('/').collect();
    let last = parts.len() - 1;
    // A trailing dot segment leaves a trailing slash ("/a/.." is "/").
    let mut trailing_slash = false;
    for (i, seg) in parts.into_iter().enumerate() {
        let bare = seg.split(';').next().unwrap_or(seg);
        if (bare == "." || bare == "..") && bare != seg {
            return Err(PathError::DotSegmentParameters);
        }
        match seg {
            "." => trailing_slash = i == last,
            ".." => {
                segments.pop();
                trailing_slash = i == last;
            }
            _ => {
                segments.push(seg);
                trailing_slash = false;
            }
        }
    }
    for seg in &segments {
        out.push('/');
        out.push_str(seg);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    if out == path {
        Ok(Cow::Borrowed(path))
    } else {
        Ok(Cow::Owned(out))
    }
}

/// Step 1 and the checks of step 3 on every character.
fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => return Err(PathError::Backslash),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
                let (hi, lo) = match (hex_value(hex[0]), hex_value(hex[1])) {
                    (Some(hi), Some(lo)) => (hi, lo),
                    _ => return Err(PathError::BadEscape),
                };
                let b = hi << 4 | lo;
                match b {
                    b'/' | b'\\' | b';' => return Err(PathError::EncodedDelimiter),
                    0..=0x1f | 0x7f => return Err(PathError::EncodedControl),
                    _ if is_unreserved(b) => out.push(char::from(b)),
                    _ => {
                        out.push('%');
                        out.push(char::from(HEX[usize::from(hi)]));
                        out.push(char::from(HEX[usize::from(lo)]));
                    }
                }
                i += 3;
            }
            _ => {
                // Not '%': copy the whole UTF-8 run up to the next byte of
                // interest (the path is a &str, so runs split on ASCII are
                // valid UTF-8).
                let end = bytes[i..]
                    .iter()
                    .position(|&b| b == b'%' || b == b'\\')
                    .map_or(bytes.len(), |n| i + n);
                out.push_str(&path[i..end]);
                i = end;
            }
        }
    }
    Ok(out)
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests;
