//! `$(VAR)` references, expanded exactly as Kubernetes' `expansion`
//! package does in `env` values, `command`, `args` and `subPathExpr`.
//!
//! `$(NAME)` is replaced by the variable's value when it is defined and
//! left as written when not; `$$` is an escaped `$`, so `$$(NAME)` is the
//! literal `$(NAME)`; any other `$` is itself. A value is not expanded again.

/// Expands the references of `input`; `lookup` gives a variable's value.
/// Unlike Go's code (which copies a byte as a rune), a non-ASCII character
/// after a lone `$` is kept intact.
pub(super) fn expand<'v>(input: &str, mut lookup: impl FnMut(&str) -> Option<&'v str>) -> String {
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    // Every cut below is at an ASCII byte, so on a character boundary.
    let mut checkpoint = 0;
    let mut cursor = 0;
    while cursor < bytes.len() {
        if bytes[cursor] != b'$' || cursor + 1 == bytes.len() {
            cursor += 1;
            continue;
        }
        out.push_str(&input[checkpoint..cursor]);
        let rest = &input[cursor + 1..];
        match bytes[cursor + 1] {
            // `$$`: one `$`.
            b'$' => {
                out.push('$');
                cursor += 2;
            }
            b'(' => match rest.find(')') {
                Some(close) => {
                    let name = &rest[1..close];
                    match lookup(name) {
                        Some(value) => out.push_str(value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    cursor += close + 2;
                }
                // An unclosed `$(`: itself.
                None => {
                    out.push_str("$(");
                    cursor += 2;
                }
            },
            // A `$` that starts no reference: itself.
            _ => {
                out.push('$');
                cursor += 1;
            }
        }
        checkpoint = cursor;
    }
    out.push_str(&input[checkpoint..]);
    out
}
