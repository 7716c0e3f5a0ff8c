//! How the client commands print the server's answers: JSON as given, or a summary table.

use serde_json::Value;

pub(super) fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub(super) fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

pub(super) fn join(values: &Value) -> String {
    let items: Vec<&str> = values
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

pub(super) fn version(value: &Value) -> String {
    value.as_u64().map_or_else(|| "-".into(), |v| v.to_string())
}

/// `sha256:0123456789ab` (12 hex digits) for tables.
pub(super) fn short(digest: &Value) -> String {
    let text = digest.as_str().unwrap_or_default();
    text.get(..19).unwrap_or(text).to_owned()
}
