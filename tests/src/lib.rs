//! End-to-end tests live in `tests/*.rs`; see TESTING.md.
