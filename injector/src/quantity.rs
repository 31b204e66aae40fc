//! Kubernetes resource quantities (`100m`, `20Mi`, `1.5`, `2e3`): checked
//! here so a bad override is refused with its name instead of making the
//! API server reject the whole pod.

/// Whether `s` is a quantity the API server accepts.
pub(crate) fn is_quantity(s: &str) -> bool {
    const SUFFIXES: [&str; 14] = [
        "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P",
    ];
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (number, suffix) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, ""),
    };
    let digits_ok = !number.is_empty() && number != "." && number.matches('.').count() <= 1;
    if !digits_ok {
        return false;
    }
    if suffix.is_empty() || SUFFIXES.contains(&suffix) || suffix == "E" {
        return true;
    }
    // Decimal exponent: e or E followed by an optionally signed integer.
    match suffix.strip_prefix(['e', 'E']) {
        Some(exp) => {
            let exp = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            !exp.is_empty() && exp.chars().all(|c| c.is_ascii_digit())
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::is_quantity;

    #[test]
    fn accepts_what_kubernetes_accepts() {
        for ok in [
            "100m",
            "20Mi",
            "1",
            "1.5",
            "0.25Gi",
            "2e3",
            "1E",
            "128974848",
            "129M",
            ".5",
        ] {
            assert!(is_quantity(ok), "{ok}");
        }
    }

    #[test]
    fn refuses_the_rest() {
        for bad in ["", "lots", "10MB", "1..2", "m", "Mi", "1 Gi", "1e", "--1"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }
}
