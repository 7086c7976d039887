//! Labelled CSV files as rows of features and a label: the input of
//! `edgeloop train` and `edgeloop evaluate --prequential`.
//!
//! The first line names the columns. A feature value that is empty or not a
//! number is missing (`NaN`), as a bad field of an MQTT payload is. Rows keep
//! their file order (a stream's time order).

use std::path::Path;

/// A labelled CSV file.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledCsv {
    /// Feature column names, input order.
    pub features: Vec<String>,
    /// `[n_rows, n_features]` row-major, `NaN` = missing.
    pub x: Vec<f32>,
    /// The label column as written, `[n_rows]`.
    pub labels: Vec<String>,
}

impl LabelledCsv {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Features of row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        let nf = self.features.len();
        &self.x[i * nf..(i + 1) * nf]
    }
}

/// `e`, an error reading the CSV file `path`, for a person: a row whose
/// number of fields differs from the header's is named by its row below the
/// header and its line in the file, counted from the error's byte offset
/// (the csv crate's own message gives the previous record's line and
/// speaks of the "previous record"); any other error as the csv crate
/// says it.
pub fn describe_csv_error(path: &Path, e: &csv::Error) -> String {
    if let csv::ErrorKind::UnequalLengths {
        pos: Some(pos),
        expected_len,
        len,
    } = e.kind()
    {
        // The offset is where the previous record ended, at its line
        // terminator: the row starts past it.
        let line = std::fs::read(path).ok().and_then(|bytes| {
            let mut end = usize::try_from(pos.byte()).ok()?.min(bytes.len());
            while bytes.get(end).is_some_and(|b| *b == b'\r' || *b == b'\n') {
                end += 1;
            }
            Some(bytes[..end].iter().filter(|&&b| b == b'\n').count() + 1)
        });
        let line = line.map_or_else(String::new, |l| format!(" (line {l})"));
        return format!(
            "row {}{line} has {len} fields where the header has {expected_len}: \
             every row needs a value (or an empty field) for each column",
            pos.record()
        );
    }
    e.to_string()
}

/// `no column `{name}`; the columns are `a`, `b`, …`: what a mistyped or
/// missing column name is told.
pub fn no_column(name: &str, headers: &csv::StringRecord) -> String {
    let columns: Vec<String> = headers.iter().map(|h| format!("`{h}`")).collect();
    format!("no column `{name}`; the columns are {}", columns.join(", "))
}

/// Reads `path`: the `label` column and the `features` columns (empty: every
/// other column whose first value is a number).
///
/// # Errors
/// A message naming the file and what is wrong: unreadable, no rows, a
/// named column missing, the label among `features`, no numeric feature
/// column.
pub fn read_labelled_csv(
    path: &Path,
    label: &str,
    features: &[String],
) -> Result<LabelledCsv, String> {
    read_labelled_csv_with(path, label, features, None)
}

/// [`read_labelled_csv`] with categorical columns: the columns of
/// `categories`' fields are read as strings and hold their codes in the
/// book (given in order of first appearance; an empty field is missing),
/// and are features even when `features` is empty.
///
/// # Errors
/// As [`read_labelled_csv`].
pub fn read_labelled_csv_with(
    path: &Path,
    label: &str,
    features: &[String],
    categories: Option<&super::categories::CategoryBook>,
) -> Result<LabelledCsv, String> {
    let categorical: &[String] = categories.map_or(&[], |b| b.fields());
    let err = |reason: String| format!("{}: {reason}", path.display());
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| err(e.to_string()))?;
    let headers = reader
        .headers()
        .map_err(|e| err(describe_csv_error(path, &e)))?
        .clone();
    // Read as one column, a file separated by `;` (spreadsheets in locales
    // with a decimal comma write them) fails at its first row, "found record
    // with 2 fields, but the previous record has 1 fields", naming neither.
    if headers.len() == 1 && headers[0].contains(';') {
        return Err(err(format!(
            "the header `{}` is one column: the file looks separated by `;`; \
             edgeloop reads comma-separated files (RFC 4180) with `.` as the decimal point",
            &headers[0]
        )));
    }
    let records: Vec<csv::StringRecord> = reader
        .records()
        .collect::<Result<_, _>>()
        .map_err(|e| err(describe_csv_error(path, &e)))?;
    let label_idx = headers
        .iter()
        .position(|h| h == label)
        .ok_or_else(|| err(no_column(label, &headers)))?;
    let features: Vec<String> = if features.is_empty() {
        let first = records.first().ok_or_else(|| err("no rows".into()))?;
        headers
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                *i != label_idx
                    && (first.get(*i).is_some_and(|v| v.parse::<f64>().is_ok())
                        || categorical.iter().any(|c| c == &headers[*i]))
            })
            .map(|(_, h)| h.to_string())
            .collect()
    } else {
        if features.iter().any(|f| f == label) {
            return Err(err(format!(
                "`{label}` is the label and cannot be a feature too (--features): \
                 a model given its own label learns nothing else"
            )));
        }
        features.to_vec()
    };
    let idx: Vec<usize> = features
        .iter()
        .map(|f| {
            headers
                .iter()
                .position(|h| h == f)
                .ok_or_else(|| err(no_column(f, &headers)))
        })
        .collect::<Result<_, _>>()?;
    if idx.is_empty() {
        return Err(err("no numeric feature column".into()));
    }
    let mut x = Vec::with_capacity(records.len() * idx.len());
    let mut labels = Vec::with_capacity(records.len());
    let cat_of: Vec<Option<usize>> = features
        .iter()
        .map(|f| categorical.iter().position(|c| c == f))
        .collect();
    for r in &records {
        x.extend(idx.iter().zip(&cat_of).map(|(&j, cat)| {
            let v = r.get(j).unwrap_or("");
            match (cat, categories) {
                (Some(k), Some(book)) if !v.is_empty() => book.code(*k, v).unwrap_or(f32::NAN),
                (Some(_), _) => f32::NAN,
                _ => v.parse::<f32>().ok().unwrap_or(f32::NAN),
            }
        }));
        labels.push(r.get(label_idx).unwrap_or("").to_string());
    }
    Ok(LabelledCsv {
        features,
        x,
        labels,
    })
}
