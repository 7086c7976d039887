//! What the command line prints for people: tables within 100 columns
//! (`--wide`: every column and cell whole) and times as local RFC 3339.

use serde_json::Value;

/// The width tables keep to without `--wide`, characters.
pub const WIDTH: usize = 100;

/// `ms` since the Unix epoch as local RFC 3339 time to the second, e.g.
/// `2026-12-06T10:02:25+01:00`: the offset is the one the system's time
/// zone (`TZ`, else `/etc/localtime`, as the C library reads them) has at
/// that instant, `+00:00` when it has none.
pub fn local_rfc3339(ms: i64) -> String {
    let Some(utc) = chrono::DateTime::from_timestamp_millis(ms) else {
        return ms.to_string();
    };
    let offset = chrono::FixedOffset::east_opt(local_offset_s(ms.div_euclid(1000)))
        .unwrap_or_else(|| chrono::Offset::fix(&chrono::Utc));
    utc.with_timezone(&offset)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
}

/// The local time zone's offset from UTC at `epoch_s`, seconds east.
/// chrono's `Local` needs its `clock` feature (and the iana-time-zone
/// crate); the C library, linked anyway, answers the same question.
fn local_offset_s(epoch_s: i64) -> i32 {
    let Some(t) = libc::time_t::try_from(epoch_s).ok() else {
        return 0;
    };
    // SAFETY: `tm` is plain data, zero is a valid value of every field;
    // localtime_r (thread-safe, POSIX) writes only into it and returns null
    // on failure.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let filled = unsafe { libc::localtime_r(&t, &mut tm) };
    if filled.is_null() {
        return 0;
    }
    i32::try_from(tm.tm_gmtoff).unwrap_or(0)
}

/// Rows as columns two spaces apart, each as wide as its widest cell;
/// lines cut to `width` ([`cut_lines`]: the last column goes first), unless
/// `width` is `None`.
fn grid(rows: &[Vec<String>], width: Option<usize>) -> String {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|j| {
            rows.iter()
                .filter_map(|r| r.get(j))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (j, cell) in row.iter().enumerate() {
            if j + 1 < row.len() {
                line.push_str(&format!("{cell:<w$}  ", w = widths[j]));
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    match width {
        Some(w) => cut_lines(&out, w),
        None => out,
    }
}

/// `text` as printed: whole with `wide`, else each line cut to [`WIDTH`]
/// ([`cut_lines`]) and, when one was, a last line saying so.
pub fn fit(text: &str, wide: bool) -> String {
    if wide || text.lines().all(|l| l.chars().count() <= WIDTH) {
        return text.to_string();
    }
    let mut out = cut_lines(text, WIDTH);
    out.push_str(&format!(
        "(lines cut at {WIDTH} columns; --wide shows them whole)\n"
    ));
    out
}

/// Each line of `text` cut to `width` characters, its last one `…` when
/// cut (a table whose last column is free text: trial parameters, reasons).
pub fn cut_lines(text: &str, width: usize) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line.chars().count() > width {
            out.extend(line.chars().take(width.saturating_sub(1)));
            out.push('…');
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// "serving version N", or, before any version serves, "no version serves
/// yet" (not "serving version null").
fn serving_text(v: &Value) -> String {
    match v["serving_version"].as_u64() {
        Some(n) => format!("serving version {n}"),
        None => "no version serves yet".into(),
    }
}

/// The answers of the models, history, import, promote and rollback
/// endpoints (`edgeloop models …`) for people: the model cards side by side
/// ([`crate::learn::card::render_table_within`]), the timeline with local
/// times; within [`WIDTH`] columns unless `wide`.
pub fn models_answer(v: &Value, wide: bool) -> String {
    let pipeline = v["pipeline"].as_str().unwrap_or("-");
    let mut out = String::new();
    if let Some(models) = v["models"].as_array() {
        out.push_str(&format!("pipeline {pipeline} ({})\n", serving_text(v)));
        let cards: Vec<crate::learn::card::ModelCard> = models
            .iter()
            .filter_map(|m| serde_json::from_value(m.clone()).ok())
            .collect();
        let serving = v["serving_version"].as_u64().map(|v| v as u32);
        out.push_str(&if wide {
            crate::learn::card::render_table(&cards, serving)
        } else {
            crate::learn::card::render_table_within(&cards, serving, WIDTH)
        });
    } else if let Some(events) = v["events"].as_array() {
        out.push_str(&format!("pipeline {pipeline} ({})\n", serving_text(v)));
        let mut rows = vec![vec![
            "at".to_string(),
            "version".into(),
            "action".into(),
            "by".into(),
            "reason".into(),
        ]];
        for e in events {
            rows.push(vec![
                e["at_ms"]
                    .as_i64()
                    .map_or_else(|| "-".into(), local_rfc3339),
                // 0: an alarm raised before any version served
                // (`ServingEvent::version`); versions count from 1.
                match e["version"].as_u64() {
                    Some(0) | None => "-".into(),
                    Some(n) => n.to_string(),
                },
                e["action"].as_str().unwrap_or("").into(),
                e["by"]
                    .as_str()
                    .filter(|b| !b.is_empty())
                    .unwrap_or("-")
                    .into(),
                e["reason"].as_str().unwrap_or("").into(),
            ]);
        }
        out.push_str(&grid(&rows, (!wide).then_some(WIDTH)));
    } else if v.get("card").is_some() && v["created"] == false {
        out.push_str(&format!(
            "pipeline {pipeline}: already stored as version {}, the same bytes; nothing imported; {}\n",
            v["version"],
            serving_text(v)
        ));
    } else if v.get("card").is_some() {
        out.push_str(&format!(
            "pipeline {pipeline}: imported as version {} (sha256 {}); {} until it is promoted\n",
            v["version"],
            v["card"]["imported"]["sha256"].as_str().unwrap_or("-"),
            match v["serving_version"].as_u64() {
                Some(n) => format!("serving version {n}"),
                None => "no version serves".into(),
            }
        ));
    } else {
        out.push_str(&format!("pipeline {pipeline}: {}\n", serving_text(v)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipeline_without_a_serving_version_says_so() {
        let models = serde_json::json!({"pipeline": "p", "models": [], "serving_version": null});
        let history = serde_json::json!({"pipeline": "p", "events": [], "serving_version": null});
        for v in [models, history] {
            let text = models_answer(&v, false);
            assert!(
                text.starts_with("pipeline p (no version serves yet)\n"),
                "{text}"
            );
            assert!(!text.contains("null"), "{text}");
        }
        let v = serde_json::json!({"pipeline": "p", "events": [], "serving_version": 3});
        assert!(models_answer(&v, false).starts_with("pipeline p (serving version 3)\n"));
        // An import into a pipeline that serves nothing yet said "serving
        // version null until it is promoted".
        let imported = serde_json::json!({"pipeline": "p", "version": 1, "created": true,
            "serving_version": null, "card": {"imported": {"sha256": "ab"}}});
        assert_eq!(
            models_answer(&imported, false),
            "pipeline p: imported as version 1 (sha256 ab); no version serves until it is promoted\n"
        );
        let again = serde_json::json!({"pipeline": "p", "version": 1, "created": false,
            "serving_version": null, "card": {}});
        assert_eq!(
            models_answer(&again, false),
            "pipeline p: already stored as version 1, the same bytes; nothing imported; no version serves yet\n"
        );
        let promoted = serde_json::json!({"pipeline": "p", "serving_version": 2});
        assert_eq!(
            models_answer(&promoted, false),
            "pipeline p: serving version 2\n"
        );
        // An anomaly alarm before the first version is stored with version
        // 0 (no version served); the history printed "0" in its column.
        let history = serde_json::json!({"pipeline": "p", "serving_version": 1, "events": [
            {"at_ms": null, "version": 0, "action": "anomaly_alarm", "by": "learner", "reason": "r"},
            {"at_ms": null, "version": 1, "action": "trained", "by": "learner", "reason": "t"}]});
        let text = models_answer(&history, true);
        let rows: Vec<Vec<&str>> = text
            .lines()
            .skip(2)
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows,
            [
                vec!["-", "-", "anomaly_alarm", "learner", "r"],
                vec!["-", "1", "trained", "learner", "t"]
            ],
            "{text}"
        );
    }
}
