//! Formatting shared by the views: kubectl-style ages, aligned tables, escaping for HTML and
//! SVG.

use k8s_openapi::jiff::Timestamp;

/// kubectl's way of printing an age: `45s`, `12m`, `5h`, `3d`; `-` for a time in the future
/// by more than a minute (clock skew), `<unknown>` without a time.
pub fn age(then: Option<Timestamp>, now: Timestamp) -> String {
    let Some(then) = then else {
        return "<unknown>".to_owned();
    };
    let seconds = now.as_second() - then.as_second();
    if seconds < -60 {
        return "-".to_owned();
    }
    let seconds = seconds.max(0);
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// A time to the second, in UTC: `2026-12-06 18:43:49Z`.
pub fn time(at: Timestamp) -> String {
    at.strftime("%Y-%m-%d %H:%M:%SZ").to_string()
}

/// `1234567` → `1,234,567`.
pub fn thousands(value: i64) -> String {
    let digits = value.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if value < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Escapes text for HTML and XML (element content and attribute values).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters are not allowed in XML 1.0.
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// A table with left-aligned columns separated by three spaces, as `kubectl get` prints.
/// The last column is not padded (it may be long: summaries, messages).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let columns = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(columns) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            text.push_str(cell);
            if i + 1 < columns {
                let pad = widths[i] + 3 - cell.chars().count();
                text.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        let now = Timestamp::from_second(1_000_000).unwrap();
        let at = |s: i64| Some(Timestamp::from_second(1_000_000 - s).unwrap());
        assert_eq!(age(at(5), now), "5s");
        assert_eq!(age(at(600), now), "10m");
        assert_eq!(age(at(3 * 3600), now), "3h");
        assert_eq!(age(at(3 * 86_400), now), "3d");
        assert_eq!(age(at(-3600), now), "-");
        assert_eq!(age(None, now), "<unknown>");
    }

    #[test]
    fn thousands_and_escaping() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(-1_000), "-1,000");
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn tables_align_columns() {
        let text = table(
            &["NAME", "MODE", "SUMMARY"],
            &[vec!["a".into(), "Enforce".into(), "long text".into()]],
        );
        assert_eq!(
            text,
            "NAME   MODE      SUMMARY\na      Enforce   long text\n"
        );
    }
}
