//! A tiny aligned-table formatter for people.
//!
//! Columns are left-aligned and separated by two spaces; widths count
//! characters; no line has trailing spaces. An empty cell prints as `-` so
//! that columns stay splittable with `awk`.

/// An aligned table: an optional header row, then data rows.
#[derive(Debug, Default, Clone)]
pub struct Table {
    header: Option<Vec<String>>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with a header row.
    pub fn new<I, S>(header: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            header: Some(header.into_iter().map(Into::into).collect()),
            rows: Vec::new(),
        }
    }

    /// A table without a header (key/value views).
    pub fn headless() -> Self {
        Self::default()
    }

    /// Appends one row.
    pub fn row<I, S>(&mut self, cells: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.rows.push(cells.into_iter().map(Into::into).collect());
        self
    }

    /// Renders the table, one `\n`-terminated line per row.
    pub fn render(&self) -> String {
        let all: Vec<&Vec<String>> = self.header.iter().chain(self.rows.iter()).collect();
        let ncols = all.iter().map(|r| r.len()).max().unwrap_or(0);
        let cell = |r: &Vec<String>, i: usize| -> String {
            match r.get(i) {
                Some(s) if !s.is_empty() => s.replace(['\n', '\r', '\t'], " "),
                _ => "-".to_string(),
            }
        };
        let mut widths = vec![0usize; ncols];
        for r in &all {
            for (i, w) in widths.iter_mut().enumerate() {
                *w = (*w).max(cell(r, i).chars().count());
            }
        }
        let mut out = String::new();
        for r in &all {
            let mut line = String::new();
            for (i, w) in widths.iter().enumerate() {
                let c = cell(r, i);
                line.push_str(&c);
                if i + 1 < ncols {
                    line.extend(std::iter::repeat_n(' ', w - c.chars().count() + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns_with_two_spaces() {
        let mut t = Table::new(["Bridge", "Underlay", "Overlay", "Flags"]);
        t.row(["fan-250", "172.30.0.28/16", "250.0.0.0/8", "host-reserve 1"]);
        t.row(["fan-10-20", "10.1.2.7/24", "10.20.0.0/16", "host-reserve 4"]);
        assert_eq!(
            t.render(),
            "Bridge     Underlay        Overlay       Flags\n\
             fan-250    172.30.0.28/16  250.0.0.0/8   host-reserve 1\n\
             fan-10-20  10.1.2.7/24     10.20.0.0/16  host-reserve 4\n"
        );
    }

    #[test]
    fn empty_cells_are_dashes_and_no_trailing_spaces() {
        let mut t = Table::new(["A", "B", "C"]);
        t.row(["x", "", "z"]);
        t.row(["long-value"]);
        let s = t.render();
        assert_eq!(s, "A           B  C\nx           -  z\nlong-value  -  -\n");
        assert!(s.lines().all(|l| !l.ends_with(' ')));
    }

    #[test]
    fn headless_and_unicode_width_by_chars() {
        let mut t = Table::headless();
        t.row(["Größe", "1"]);
        t.row(["MTU", "1480"]);
        assert_eq!(t.render(), "Größe  1\nMTU    1480\n");
        assert_eq!(Table::new(["A"]).render(), "A\n");
        assert_eq!(Table::headless().render(), "");
    }

    #[test]
    fn newlines_in_cells_do_not_break_rows() {
        let mut t = Table::headless();
        t.row(["reason", "line one\nline two"]);
        assert_eq!(t.render(), "reason  line one line two\n");
    }
}
