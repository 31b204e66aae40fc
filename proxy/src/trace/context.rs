//! Trace context on the wire, as pure functions: W3C `traceparent` read and
//! written, B3 (`b3`, and `X-B3-TraceId`/`X-B3-SpanId`/`X-B3-Sampled`/
//! `X-B3-Flags`) read and written. Every header here comes from an
//! untrusted client: anything malformed is ignored (the request then
//! starts a new trace), never an error.
//!
//! The W3C context wins when a request carries both; `tracestate` is
//! never parsed: it travels beside a continued `traceparent` untouched.

use http::header::{HeaderMap, HeaderName, HeaderValue};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const B3: HeaderName = HeaderName::from_static("b3");
pub const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
pub const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
pub const B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
pub const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// A 16-byte trace id, never all zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span id, never all zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

/// Which header a context was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    W3c,
    B3Single,
    B3Multi,
}

/// The caller's span: the parent of the proxy's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: TraceId,
    pub span_id: SpanId,
}

/// What a request says about its trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Extracted {
    /// The caller's span, when a valid context came with the request.
    pub parent: Option<Parent>,
    /// The caller's sampling decision; `None`: it left it to us (B3's
    /// deferred decision, or no context at all).
    pub sampled: Option<bool>,
    /// Where `parent` or `sampled` came from.
    pub format: Option<Format>,
}

/// Reads a request's trace context: `traceparent` if valid, else `b3`,
/// else the `X-B3-*` headers.
pub fn extract(headers: &HeaderMap) -> Extracted {
    if let Some(tp) = headers
        .get(TRACEPARENT)
        .and_then(|v| parse_traceparent(v.as_bytes()))
    {
        return tp;
    }
    if let Some(b3) = headers.get(B3).and_then(|v| parse_b3_single(v.as_bytes())) {
        return b3;
    }
    let get = |name: &HeaderName| headers.get(name).map(HeaderValue::as_bytes);
    parse_b3_multi(
        get(&B3_TRACE_ID),
        get(&B3_SPAN_ID),
        get(&B3_SAMPLED),
        get(&B3_FLAGS),
    )
    .unwrap_or_default()
}

/// `version-traceid-spanid-flags`, all lowercase hex. Version `00` is
/// exactly 55 bytes; a later version may append `-…` fields, which are
/// ignored; version `ff` is invalid.
pub fn parse_traceparent(v: &[u8]) -> Option<Extracted> {
    if v.len() < 55 || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let version = hex_byte(&v[0..2])?;
    if version == 0xff || (version == 0 && v.len() != 55) {
        return None;
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let trace_id = trace_id(&v[3..35])?;
    let span_id = span_id(&v[36..52])?;
    let flags = hex_byte(&v[53..55])?;
    Some(Extracted {
        parent: Some(Parent { trace_id, span_id }),
        sampled: Some(flags & 1 == 1),
        format: Some(Format::W3c),
    })
}

/// `traceparent` naming `span_id` (the proxy's span) as the parent of what
/// comes next.
pub fn format_traceparent(trace_id: TraceId, span_id: SpanId, sampled: bool) -> HeaderValue {
    let mut out = [0u8; 55];
    out[..3].copy_from_slice(b"00-");
    write_hex(&trace_id.0, &mut out[3..35]);
    out[35] = b'-';
    write_hex(&span_id.0, &mut out[36..52]);
    out[52] = b'-';
    out[53] = b'0';
    out[54] = if sampled { b'1' } else { b'0' };
    // Hex digits and '-' only: always a valid header value.
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `b3: {traceid}-{spanid}[-{sampling}[-{parentspanid}]]`, or a bare
/// sampling state (`0`, `1`, `d`) with no context.
pub fn parse_b3_single(v: &[u8]) -> Option<Extracted> {
    if let Some(sampled) = b3_sampling(v) {
        return Some(Extracted {
            parent: None,
            sampled: Some(sampled),
            format: Some(Format::B3Single),
        });
    }
    let mut parts = v.split(|b| *b == b'-');
    let trace_id = b3_trace_id(parts.next()?)?;
    let span = span_id(parts.next()?)?;
    let sampled = match parts.next() {
        None => None,
        Some(s) => Some(b3_sampling(s)?),
    };
    if let Some(parent) = parts.next() {
        span_id(parent)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Extracted {
        parent: Some(Parent {
            trace_id,
            span_id: span,
        }),
        sampled,
        format: Some(Format::B3Single),
    })
}

/// `b3` for what comes next, naming `span_id` as its parent.
pub fn format_b3(trace_id: TraceId, span_id: SpanId, sampled: bool) -> HeaderValue {
    let mut out = [0u8; 32 + 1 + 16 + 2];
    write_hex(&trace_id.0, &mut out[..32]);
    out[32] = b'-';
    write_hex(&span_id.0, &mut out[33..49]);
    out[49] = b'-';
    out[50] = if sampled { b'1' } else { b'0' };
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The `X-B3-*` headers: a trace id and a span id together, or only a
/// sampling decision (`X-B3-Sampled`, or `X-B3-Flags: 1` for debug).
pub fn parse_b3_multi(
    trace_id: Option<&[u8]>,
    span_id_v: Option<&[u8]>,
    sampled: Option<&[u8]>,
    flags: Option<&[u8]>,
) -> Option<Extracted> {
    let debug = flags == Some(b"1");
    let sampled = match sampled {
        _ if debug => Some(true),
        None => None,
        Some(b"1" | b"true") => Some(true),
        Some(b"0" | b"false") => Some(false),
        Some(_) => None,
    };
    let parent = match (trace_id, span_id_v) {
        (Some(t), Some(s)) => Some(Parent {
            trace_id: b3_trace_id(t)?,
            span_id: span_id(s)?,
        }),
        _ => None,
    };
    if parent.is_none() && sampled.is_none() {
        return None;
    }
    Some(Extracted {
        parent,
        sampled,
        format: Some(Format::B3Multi),
    })
}

/// The `X-B3-*` headers and `b3`, every one: what [`Format::B3Multi`] and
/// [`Format::B3Single`] read.
pub const B3_HEADERS: [HeaderName; 6] = [
    B3,
    B3_TRACE_ID,
    B3_SPAN_ID,
    B3_PARENT_SPAN_ID,
    B3_SAMPLED,
    B3_FLAGS,
];

fn b3_sampling(v: &[u8]) -> Option<bool> {
    match v {
        b"1" | b"d" => Some(true),
        b"0" => Some(false),
        _ => None,
    }
}

/// 32 hex digits, or 16 (a 64-bit B3 trace id, left-padded with zeros).
fn b3_trace_id(v: &[u8]) -> Option<TraceId> {
    match v.len() {
        32 => trace_id(v),
        16 => {
            let mut padded = [b'0'; 32];
            padded[16..].copy_from_slice(v);
            trace_id(&padded)
        }
        _ => None,
    }
}

fn trace_id(v: &[u8]) -> Option<TraceId> {
    let mut out = [0u8; 16];
    decode_hex(v, &mut out)?;
    (out != [0; 16]).then_some(TraceId(out))
}

fn span_id(v: &[u8]) -> Option<SpanId> {
    let mut out = [0u8; 8];
    decode_hex(v, &mut out)?;
    (out != [0; 8]).then_some(SpanId(out))
}

/// Lowercase hex only, as W3C requires (B3 too).
fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn hex_byte(v: &[u8]) -> Option<u8> {
    Some(nibble(v[0])? << 4 | nibble(v[1])?)
}

fn decode_hex(v: &[u8], out: &mut [u8]) -> Option<()> {
    if v.len() != out.len() * 2 {
        return None;
    }
    for (o, pair) in out.iter_mut().zip(v.chunks_exact(2)) {
        *o = hex_byte(pair)?;
    }
    Some(())
}

fn write_hex(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (b, o) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        o[0] = DIGITS[usize::from(b >> 4)];
        o[1] = DIGITS[usize::from(b & 0xf)];
    }
}

impl std::fmt::Display for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = [0u8; 32];
        write_hex(&self.0, &mut out);
        f.write_str(std::str::from_utf8(&out).map_err(|_| std::fmt::Error)?)
    }
}

impl std::fmt::Display for SpanId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = [0u8; 16];
        write_hex(&self.0, &mut out);
        f.write_str(std::str::from_utf8(&out).map_err(|_| std::fmt::Error)?)
    }
}
