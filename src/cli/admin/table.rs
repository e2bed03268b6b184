//! Aligned text tables.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// Widths of each column: the widest cell or header, in characters.
fn column_widths(headers: &[&str], rows: &[Vec<String>]) -> Vec<usize> {
    let mut w: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < w.len() {
                w[i] = w[i].max(cell.chars().count());
            }
        }
    }
    w
}

/// Columns separated by two spaces, each padded to its widest cell; the
/// last column is not padded (no trailing spaces).
pub fn table(headers: &[&str], align: &[Align], rows: &[Vec<String>]) -> String {
    let w = column_widths(headers, rows);
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate().take(w.len()) {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = w[i].saturating_sub(cell.chars().count());
            let last = i + 1 == w.len();
            match align.get(i).copied().unwrap_or(Align::Left) {
                Align::Right => {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(cell);
                }
                Align::Left => {
                    line.push_str(cell);
                    if !last {
                        line.push_str(&" ".repeat(pad));
                    }
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Truncates the last column so that each line fits in `width` characters
/// (keeping at least `min_last` of it).
pub fn fit_last_column(headers: &[&str], rows: &mut [Vec<String>], width: usize, min_last: usize) {
    let w = column_widths(headers, rows);
    let Some((_, others)) = w.split_last() else {
        return;
    };
    let used: usize = others.iter().map(|c| c + 2).sum();
    let room = width.saturating_sub(used).max(min_last);
    for row in rows.iter_mut() {
        if let Some(cell) = row.get_mut(w.len() - 1) {
            *cell = truncate(cell, room);
        }
    }
}
