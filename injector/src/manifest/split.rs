//! A manifest's documents, each with the text it was written as, so a
//! document `trellis inject` does not change is printed byte for byte
//! (comments, order, quoting and all).
//!
//! A YAML stream is cut at the lines that start a document (`---` at the
//! start of a line, alone or followed by a space) and after the lines that
//! end one (`...`): YAML allows such a line nowhere else (block scalars at
//! those columns belong to a top-level scalar, which no Kubernetes object
//! is).

use serde_yaml_ng::Value as Yaml;

/// One piece of the input: a document, or text between documents
/// (comments, directives, empty `---`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk<'a> {
    /// Everything, including the `---` line that opens it.
    pub text: &'a str,
    /// The `---` line that opens it, if any.
    pub marker: &'a str,
    /// Its first line's number in the input, from 1.
    pub first_line: usize,
}

impl<'a> Chunk<'a> {
    /// The text after the `---` line.
    pub fn body(&self) -> &'a str {
        &self.text[self.marker.len()..]
    }

    /// Whether the chunk holds anything but comments, blank lines,
    /// directives and markers.
    pub fn has_content(&self) -> bool {
        let marker_content = self
            .marker
            .trim_start_matches("---")
            .trim_start()
            .trim_end();
        (!marker_content.is_empty() && !marker_content.starts_with('#'))
            || self.body().lines().any(|l| {
                let t = l.trim();
                !(t.is_empty() || t.starts_with('#') || l.starts_with('%') || is_end(l))
            })
    }

    /// Comment and blank lines before the document's first line of content.
    pub fn leading_comments(&self) -> &'a str {
        let body = self.body();
        let mut end = 0;
        for l in body.split_inclusive('\n') {
            let t = l.trim();
            if !(t.is_empty() || t.starts_with('#')) {
                break;
            }
            end += l.len();
        }
        &body[..end]
    }

    /// Comment lines at column 0 (and blank lines, and an `...` line) after
    /// the document's last line of content: they cannot be part of a value.
    pub fn trailing_comments(&self) -> &'a str {
        let body = self.body();
        let lines: Vec<&str> = body.split_inclusive('\n').collect();
        let kept = lines
            .iter()
            .rev()
            .take_while(|l| l.trim().is_empty() || l.starts_with('#') || is_end(l))
            .map(|l| l.len())
            .sum::<usize>();
        let start = body.len() - kept;
        // Leading comments are not trailing ones too.
        if start < self.leading_comments().len() {
            ""
        } else {
            &body[start..]
        }
    }
}

fn is_start(line: &str) -> bool {
    marker(line, "---")
}

fn is_end(line: &str) -> bool {
    marker(line, "...")
}

fn marker(line: &str, m: &str) -> bool {
    line.strip_prefix(m)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
}

/// The chunks of a YAML stream; their texts concatenate to `text`.
pub fn yaml_chunks(text: &str) -> Vec<Chunk<'_>> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut marker_len = 0;
    let mut pos = 0;
    let mut push = |start: usize, end: usize, marker_len: usize| {
        chunks.push(Chunk {
            text: &text[start..end],
            marker: &text[start..start + marker_len],
            first_line: text[..start].matches('\n').count() + 1,
        });
    };
    for line in text.split_inclusive('\n') {
        if is_start(line) {
            if pos > start {
                push(start, pos, marker_len);
            }
            start = pos;
            marker_len = line.len();
        }
        pos += line.len();
        if is_end(line) {
            push(start, pos, marker_len);
            start = pos;
            marker_len = 0;
        }
    }
    if pos > start {
        push(start, pos, marker_len);
    }
    chunks
}

/// The documents of a stream of JSON values (what `kubectl` reads as
/// JSON), in their key order; `None` when the text is not JSON.
pub fn json_docs(text: &str) -> Option<Vec<Yaml>> {
    let trimmed = text.trim_start_matches('\u{FEFF}').trim_start();
    if !trimmed.starts_with(['{', '[']) {
        return None;
    }
    let docs: Result<Vec<Yaml>, _> = serde_json::Deserializer::from_str(trimmed)
        .into_iter::<Yaml>()
        .collect();
    docs.ok().filter(|d| !d.is_empty())
}
