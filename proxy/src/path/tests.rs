use proptest::prelude::*;

use super::*;

#[test]
fn normal_paths_are_borrowed_unchanged() {
    for p in [
        "/",
        "/api",
        "/api/",
        "/a/b/c",
        "/index.html",
        "/a;jsessionid=1",
        "/a//b",
        "/%25",
        "/%20x",
        "/a?b",
    ] {
        let n = normalize(p).unwrap();
        assert!(matches!(n, Cow::Borrowed(_)), "{p} was copied");
        assert_eq!(n, p);
    }
}

#[test]
fn normalisation_table() {
    let cases = [
        // The tricks of the security review.
        ("/api/../admin", "/admin"),
        ("/api/%2e%2e/admin", "/admin"),
        ("/api/%2E%2E/admin", "/admin"),
        ("/api/.%2e/admin", "/admin"),
        // Dot segments.
        ("/a/./b", "/a/b"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/..", "/"),
        ("/../../x", "/x"),
        ("/a/../../b", "/b"),
        ("/.", "/"),
        // Unreserved escapes decoded; others kept, hex upper-cased.
        ("/%41%62c", "/Abc"),
        ("/%7e%2d%5f", "/~-_"),
        ("/a%20b", "/a%20b"),
        ("/a%3f", "/a%3F"),
        ("/%c3%a9", "/%C3%A9"),
        ("/%25", "/%25"),
    ];
    for (input, want) in cases {
        assert_eq!(normalize(input).unwrap(), want, "{input}");
    }
}

#[test]
fn ambiguous_paths_are_refused() {
    let cases = [
        ("/api/..%2fadmin", PathError::EncodedDelimiter),
        ("/api/..%2Fadmin", PathError::EncodedDelimiter),
        ("/api/%5c..", PathError::EncodedDelimiter),
        ("/a%3bb", PathError::EncodedDelimiter),
        ("/api/..;/admin", PathError::DotSegmentParameters),
        ("/api/.;x/admin", PathError::DotSegmentParameters),
        ("/api/%2e%2e;/admin", PathError::DotSegmentParameters),
        ("/api\\..\\admin", PathError::Backslash),
        ("/a%00", PathError::EncodedControl),
        ("/a%0d%0a", PathError::EncodedControl),
        ("/a%7F", PathError::EncodedControl),
        ("/a%", PathError::BadEscape),
        ("/a%4", PathError::BadEscape),
        ("/a%zz", PathError::BadEscape),
        ("api", PathError::NotAbsolute),
        ("", PathError::NotAbsolute),
    ];
    for (input, want) in cases {
        assert_eq!(normalize(input), Err(want), "{input}");
    }
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(".".to_string()),
        Just("..".to_string()),
        Just("%2e".to_string()),
        Just("%2E%2e".to_string()),
        Just(String::new()),
        "[a-z0-9~_-]{1,4}",
        "%[0-9A-Fa-f]{2}",
        "[a-z]{1,2};[a-z]{0,2}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// A normal path is its own normal form; no dot segment, unreserved
    /// escape or lower-case hex survives.
    #[test]
    fn normalising_twice_changes_nothing(segs in prop::collection::vec(segment(), 0..8)) {
        let path = format!("/{}", segs.join("/"));
        if let Ok(once) = normalize(&path) {
            let twice = normalize(&once).unwrap();
            prop_assert_eq!(&twice, &once);
            prop_assert!(once.starts_with('/'));
            for seg in once.split('/') {
                prop_assert!(seg != "." && seg != "..", "{} → {}", path, once);
            }
            prop_assert!(!once.to_ascii_lowercase().contains("%2e"), "{} → {}", path, once);
        }
    }

    /// Arbitrary input never panics, and what is accepted starts with '/'.
    #[test]
    fn never_panics(s in "\\PC{0,40}") {
        if let Ok(n) = normalize(&s) {
            prop_assert!(n.starts_with('/'));
        }
    }
}
