//! Plain-text tables with aligned columns, for `mesh status` and `demo`.

/// Renders `rows` under `headers`, columns separated by two spaces; the
/// last column is not padded.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let columns = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(columns) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate().take(columns) {
            if i + 1 == columns {
                text.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                text.push_str(cell);
                text.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns() {
        let t = render(
            &["NAME", "IP", "READY"],
            &[
                vec!["web-0".into(), "10.77.0.2".into(), "yes".into()],
                vec!["a".into(), "".into(), "no".into()],
            ],
        );
        assert_eq!(
            t,
            "NAME   IP         READY\nweb-0  10.77.0.2  yes\na                 no\n"
        );
    }
}
