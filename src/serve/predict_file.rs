//! `edgeloop predict`: any ONNX model on a CSV file's rows, through the
//! engine layer ([`super::engine::Session`]).
//!
//! Columns are picked by the model's input names when the CSV header has
//! them; a single 2-D input not named in the header takes the features an
//! edgeloop model's metadata lists (when the header has them all), else the
//! columns in order (the first `width` when the model declares its width).
//! Cells that are not numbers are missing values (`NaN`) for float inputs.
//!
//! Each CSV row is one sample. Its columns become the input's row: `[width]`
//! for a 2-D input, the shape `--input-shape` gives (`1,64` for a 1-D CNN's
//! `[N, 1, 64]`), or the declared dims after the batch axis when the model
//! fixes them all. The rows run through [`Session::run_rows`], the path the
//! daemon takes too: a fixed batch (`[1, 20]`) that many rows a run, a model
//! without a batch axis (`[6]`) one row a run.

use std::path::Path;

use serde_json::{json, Map, Value};

use super::engine::{
    DType, Data, Engine, EngineKind, LoadOptions, ModelError, Named, Session, Tensor,
};
use crate::onnx::export;

/// Errors of `edgeloop predict`.
#[derive(Debug, thiserror::Error)]
pub enum PredictFileError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("{path}: {source}")]
    Model { path: String, source: ModelError },
}

/// Outputs of a model over every row of a file.
#[derive(Debug, Clone)]
pub struct FilePredictions {
    /// The engine that ran the model.
    pub engine: Engine,
    /// Number of rows read.
    pub n_rows: usize,
    /// Every output, in declared order, for all rows at once.
    pub outputs: Vec<Named>,
}

/// Loads the model at `model` on `kind` (external-data files read from
/// beside it) and runs it on the rows of `csv`; `input_shape` is the shape
/// of one row of a single input of rank 3 or more (`[1, 64]`).
///
/// # Errors
/// [`PredictFileError::File`] when a file cannot be read, the CSV lacks a
/// column the model needs, or a row's columns do not fill the input's row
/// shape (the message names the input and its declared dims); [`PredictFileError::Model`] when the engine
/// refuses the model ([`ModelError::UnsupportedOperator`] names the
/// operator) or fails on the rows.
pub fn predict_file(
    model: &Path,
    csv: &Path,
    kind: EngineKind,
    options: &LoadOptions,
    input_shape: Option<&[usize]>,
) -> Result<FilePredictions, PredictFileError> {
    let file_err = |path: &Path, reason: String| PredictFileError::File {
        path: path.display().to_string(),
        reason,
    };
    let bytes = std::fs::read(model).map_err(|e| file_err(model, e.to_string()))?;
    let mut reader = csv::Reader::from_path(csv).map_err(|e| file_err(csv, e.to_string()))?;
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| file_err(csv, e.to_string()))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    let records: Vec<csv::StringRecord> = reader
        .records()
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(csv, e.to_string()))?;
    if records.is_empty() {
        return Err(file_err(csv, "no rows".into()));
    }
    let meta_features = export::read_metadata(&bytes).ok().map(|m| m.features);
    let mut options = options.clone();
    if options.input_width.is_none() {
        options.input_width = Some(meta_features.as_ref().map_or(header.len(), Vec::len));
    }
    let model_err = |source| PredictFileError::Model {
        path: model.display().to_string(),
        source,
    };
    let session = Session::load_file(model, kind, &options).map_err(model_err)?;
    let n = records.len();
    let mut inputs = Vec::new();
    let single = session.inputs().len() == 1;
    for info in session.inputs() {
        let columns: Vec<usize> = if let Some(c) = header.iter().position(|h| *h == info.name) {
            vec![c]
        } else if single {
            let by_meta = meta_features.as_ref().and_then(|features| {
                features
                    .iter()
                    .map(|f| header.iter().position(|h| h == f))
                    .collect::<Option<Vec<usize>>>()
            });
            match by_meta {
                Some(cols) => cols,
                None => {
                    let width = input_shape
                        .map(|s| s.iter().product())
                        .or_else(|| row_width(info.dims.as_deref()))
                        .unwrap_or(header.len());
                    if width > header.len() {
                        return Err(file_err(
                            csv,
                            match input_shape {
                                Some(shape) => format!(
                                    "--input-shape {shape:?} holds {width} values a row; the file has {} columns (input `{}`: {})",
                                    header.len(),
                                    info.name,
                                    info.dims.as_deref().map_or_else(|| "no shape".into(), dims_text)
                                ),
                                None => format!(
                                    "input `{}` takes {width} columns; the file has {}",
                                    info.name,
                                    header.len()
                                ),
                            },
                        ));
                    }
                    (0..width).collect()
                }
            }
        } else {
            return Err(file_err(
                csv,
                format!("no column `{}` (a model input)", info.name),
            ));
        };
        let mut shape = vec![n];
        shape.extend(
            row_shape(info, columns.len(), input_shape.filter(|_| single))
                .map_err(|reason| file_err(csv, reason))?,
        );
        let cells = records
            .iter()
            .flat_map(|r| columns.iter().map(move |c| r.get(*c).unwrap_or("").trim()));
        let number = |s: &str| s.parse::<f64>().unwrap_or(f64::NAN);
        let data = match info.dtype {
            DType::String => Data::String(cells.map(str::to_string).collect()),
            DType::I64 | DType::I32 | DType::Bool => Data::I64(
                cells
                    .map(|s| {
                        s.parse::<i64>().map_err(|_| {
                            file_err(
                                csv,
                                format!("column of `{}`: `{s}` is not an integer", info.name),
                            )
                        })
                    })
                    .collect::<Result<_, _>>()?,
            ),
            DType::F64 => Data::F64(cells.map(number).collect()),
            _ => Data::F32(cells.map(|s| number(s) as f32).collect()),
        };
        let tensor = Tensor::new(shape, data).map_err(model_err)?;
        inputs.push(Named::new(&info.name, tensor));
    }
    let outputs = session.run_rows(&inputs).map_err(model_err)?;
    Ok(FilePredictions {
        engine: session.engine(),
        n_rows: n,
        outputs,
    })
}

/// `[dims]` as text, `?` for a symbolic or absent dim.
fn dims_text(dims: &[Option<usize>]) -> String {
    let d: Vec<String> = dims
        .iter()
        .map(|d| d.map_or_else(|| "?".into(), |n| n.to_string()))
        .collect();
    format!("[{}]", d.join(", "))
}

/// Values per row the declared dims fix: the dims after the batch axis
/// (all known), or a batch-less 1-D input's one dim.
fn row_width(dims: Option<&[Option<usize>]>) -> Option<usize> {
    match dims? {
        [Some(d)] => Some(*d),
        [_, rest @ ..] if !rest.is_empty() => rest.iter().copied().product(),
        _ => None,
    }
}

/// The shape one CSV row of `width` columns takes as input `info`:
/// `given` (`--input-shape`), else from the declared dims: `[]` for a 1-D
/// input with a batch axis fed one column, `[width]` for a batch-less 1-D
/// input or a 2-D input, the declared dims after the batch axis for a
/// higher rank when the model fixes them.
fn row_shape(
    info: &super::engine::TensorInfo,
    width: usize,
    given: Option<&[usize]>,
) -> Result<Vec<usize>, String> {
    let dims = info.dims.as_deref();
    let declared = dims.map_or_else(|| "no shape".to_string(), dims_text);
    if let Some(shape) = given {
        let values: usize = shape.iter().product();
        if values != width {
            return Err(format!(
                "--input-shape {shape:?} holds {values} values; input `{}` ({declared}) gets {width} columns a row",
                info.name
            ));
        }
        return Ok(shape.to_vec());
    }
    match dims {
        None => Ok(vec![width]),
        Some([Some(d)]) if *d == width && width > 1 => Ok(vec![width]),
        Some([_]) if width == 1 => Ok(vec![]),
        Some([_, _]) => Ok(vec![width]),
        Some([_, rest @ ..]) if rest.len() > 1 => {
            let fixed: Option<Vec<usize>> = rest.iter().copied().collect();
            match fixed {
                Some(r) if r.iter().product::<usize>() == width => Ok(r),
                _ => Err(format!(
                    "input `{}` takes {declared}: give each row's shape with --input-shape \
                     (e.g. {}) for the {width} columns a row has",
                    info.name,
                    rest.iter()
                        .map(|d| d.map_or_else(|| "?".to_string(), |n| n.to_string()))
                        .collect::<Vec<_>>()
                        .join(",")
                )),
            }
        }
        Some(_) => Err(format!(
            "input `{}` takes {declared}; the file gives {width} columns a row",
            info.name
        )),
    }
}

impl FilePredictions {
    /// Column names of [`FilePredictions::table`]: an output `[N]` is one
    /// column, `[N, C]` is C columns `name[key]` (ZipMap keys) or `name[j]`.
    fn columns(&self) -> Vec<String> {
        let mut cols = Vec::new();
        for o in &self.outputs {
            let width = self.row_width(o);
            match (&o.keys, width) {
                (_, 1) if o.tensor.shape.len() <= 1 => cols.push(o.name.clone()),
                (Some(keys), _) => cols.extend(keys.iter().map(|k| format!("{}[{k}]", o.name))),
                (None, w) => cols.extend((0..w).map(|j| format!("{}[{j}]", o.name))),
            }
        }
        cols
    }

    fn row_width(&self, o: &Named) -> usize {
        if o.tensor.shape.first() == Some(&self.n_rows) && self.n_rows > 0 {
            o.tensor.data.len() / self.n_rows
        } else {
            o.tensor.data.len()
        }
    }

    /// Values of output `o` for row `i` (the whole output when it has no
    /// batch dim).
    fn row(&self, o: &Named, i: usize) -> std::ops::Range<usize> {
        let w = self.row_width(o);
        if o.tensor.shape.first() == Some(&self.n_rows) {
            i * w..(i + 1) * w
        } else {
            0..w
        }
    }

    /// One line per row, columns aligned, a header first.
    pub fn table(&self) -> String {
        let mut lines = vec![std::iter::once("row".to_string())
            .chain(self.columns())
            .collect::<Vec<_>>()];
        for i in 0..self.n_rows {
            let mut line = vec![i.to_string()];
            for o in &self.outputs {
                for k in self.row(o, i) {
                    line.push(o.tensor.data.format(k));
                }
            }
            lines.push(line);
        }
        let n_cols = lines.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..n_cols)
            .map(|c| {
                lines
                    .iter()
                    .filter_map(|l| l.get(c))
                    .map(String::len)
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for l in &lines {
            let cells: Vec<String> = l
                .iter()
                .enumerate()
                .map(|(c, s)| format!("{s:>w$}", w = widths[c]))
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
        out
    }

    /// `{"engine", "rows": [{output: value}]}`: a value per row is a scalar
    /// for an output `[N]`, an object by key for a ZipMap, else a list.
    pub fn to_json(&self) -> Value {
        let rows: Vec<Value> = (0..self.n_rows)
            .map(|i| {
                let mut row = Map::new();
                for o in &self.outputs {
                    let range = self.row(o, i);
                    let vals: Vec<Value> = range.map(|k| value_at(&o.tensor.data, k)).collect();
                    let v = match &o.keys {
                        Some(keys) => Value::Object(keys.iter().cloned().zip(vals).collect()),
                        None if o.tensor.shape.len() <= 1 && vals.len() == 1 => vals[0].clone(),
                        None => Value::Array(vals),
                    };
                    row.insert(o.name.clone(), v);
                }
                Value::Object(row)
            })
            .collect();
        json!({ "engine": self.engine, "rows": rows })
    }
}

fn value_at(d: &Data, k: usize) -> Value {
    match d {
        Data::F32(v) => json!(v[k]),
        Data::F64(v) => json!(v[k]),
        Data::I64(v) => json!(v[k]),
        Data::String(v) => json!(v[k]),
    }
}
