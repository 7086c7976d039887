//! Categorical features: the strings of a pipeline's `categorical` fields
//! as codes in the `f32` feature vector of a [`Sample`](crate::store::Sample).
//!
//! A sample's features stay `f32` (the stored format is unchanged, so a
//! store written before categorical fields existed opens and reads as
//! before); a categorical field's slot holds the **code** of its string: its
//! index in the pipeline's [`CategoryBook`], `0, 1, 2, …` in order of first
//! appearance, exact in `f32`. `NaN` is a missing category (absent, `null`,
//! an empty string). The book only grows: a code, once given, always names
//! the same string in this store.
//!
//! The daemon's book lives in the store's `state` table under
//! `categories/{pipeline}` (JSON `{field: [string by code]}`). A new string
//! is written there in its own durable commit **before** the sample that
//! carries its code is committed, so no stored code is ever without its
//! string. New strings are rare (at most [`MAX_CODES`] per field; beyond
//! that a new string is a missing value, reason `non_numeric`), so that
//! commit is paid once per category.
//!
//! Models never see the codes: training turns them back into strings
//! ([`CategoryBook::snapshot`]), and an exported model takes the strings
//! themselves (`crate::learn::preprocess`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::stats::Reason;
use crate::store::{Store, StoreError};

/// Codes a field may hold; a new string past this many is a missing value.
pub const MAX_CODES: usize = 1024;

/// The strings of a pipeline's categorical fields, each field's by code.
pub struct CategoryBook {
    pipeline: String,
    fields: Vec<String>,
    /// Per field (in `fields` order), the strings by code.
    codes: Mutex<Vec<Vec<String>>>,
    /// Where new strings are written; `None`: in memory only
    /// (`edgeloop train` on a CSV, tests).
    store: Option<Arc<Store>>,
}

impl std::fmt::Debug for CategoryBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CategoryBook")
            .field("pipeline", &self.pipeline)
            .field("fields", &self.fields)
            .field("codes", &self.snapshot())
            .finish()
    }
}

impl PartialEq for CategoryBook {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
            || (self.fields == other.fields && self.snapshot() == other.snapshot())
    }
}

impl CategoryBook {
    /// An empty book kept in memory.
    pub fn in_memory(fields: &[String]) -> Self {
        Self {
            pipeline: String::new(),
            fields: fields.to_vec(),
            codes: Mutex::new(vec![Vec::new(); fields.len()]),
            store: None,
        }
    }

    /// The store's book of `pipeline` (empty when the store has none, as a
    /// store written before categorical fields existed), writing new
    /// strings back to the store.
    ///
    /// # Errors
    /// [`StoreError`] when the state cannot be read (a stored book that is
    /// not the JSON this writes reads as empty).
    pub fn open(store: Arc<Store>, pipeline: &str, fields: &[String]) -> Result<Self, StoreError> {
        let mut codes = vec![Vec::new(); fields.len()];
        if let Some(bytes) = store.get_state(&Self::state_key(pipeline))? {
            let saved: BTreeMap<String, Vec<String>> =
                serde_json::from_slice(&bytes).unwrap_or_default();
            for (f, c) in fields.iter().zip(&mut codes) {
                *c = saved.get(f).cloned().unwrap_or_default();
            }
        }
        Ok(Self {
            pipeline: pipeline.to_string(),
            fields: fields.to_vec(),
            codes: Mutex::new(codes),
            store: Some(store),
        })
    }

    /// The `state` key of a pipeline's book.
    pub fn state_key(pipeline: &str) -> String {
        format!("categories/{pipeline}")
    }

    /// The categorical fields, in order.
    pub fn fields(&self) -> &[String] {
        &self.fields
    }

    /// Each field's strings by code.
    pub fn snapshot(&self) -> BTreeMap<String, Vec<String>> {
        let codes = self.codes.lock().unwrap_or_else(|p| p.into_inner());
        self.fields
            .iter()
            .cloned()
            .zip(codes.iter().cloned())
            .collect()
    }

    /// The code of `value` in `field` (index in [`Self::fields`]), given
    /// now if new (and written to the store first).
    ///
    /// # Errors
    /// [`Reason::NonNumeric`] when the field already has [`MAX_CODES`]
    /// strings or the store refused the new one (the reading is then a
    /// missing value).
    pub fn code(&self, field: usize, value: &str) -> Result<f32, Reason> {
        let mut codes = self.codes.lock().unwrap_or_else(|p| p.into_inner());
        let Some(list) = codes.get(field) else {
            return Err(Reason::NonNumeric);
        };
        if let Some(i) = list.iter().position(|s| s == value) {
            return Ok(i as f32);
        }
        if list.len() >= MAX_CODES {
            return Err(Reason::NonNumeric);
        }
        let code = list.len();
        codes[field].push(value.to_string());
        if let Some(store) = &self.store {
            let saved: BTreeMap<&String, &Vec<String>> =
                self.fields.iter().zip(codes.iter()).collect();
            let bytes = serde_json::to_vec(&saved).unwrap_or_default();
            if let Err(e) = store.put_state(&Self::state_key(&self.pipeline), &bytes) {
                codes[field].pop();
                tracing::warn!(pipeline = %self.pipeline, error = %e, "A new category could not be stored; the reading is missing.");
                return Err(Reason::NonNumeric);
            }
        }
        Ok(code as f32)
    }

    /// The code of `value` in `field` when it has one (nothing is given).
    pub fn lookup(&self, field: usize, value: &str) -> Option<f32> {
        let codes = self.codes.lock().unwrap_or_else(|p| p.into_inner());
        codes
            .get(field)?
            .iter()
            .position(|s| s == value)
            .map(|i| i as f32)
    }
}

/// A categorical reading of a JSON value: a string (trimmed), a number
/// (canonical form, `1` for `1.0`) or a boolean (`"1"`, `"0"`, as labels).
///
/// # Errors
/// [`Reason::MissingFeature`] when absent, `null` or an empty string;
/// [`Reason::NonNumeric`] for an array or an object.
pub fn category_of(v: Option<&Value>) -> Result<String, Reason> {
    match v {
        None | Some(Value::Null) => Err(Reason::MissingFeature),
        Some(Value::String(s)) if s.trim().is_empty() || s.starts_with('\0') => {
            Err(Reason::MissingFeature)
        }
        Some(Value::String(s)) => Ok(s.trim().to_string()),
        Some(Value::Number(n)) => Ok(super::decode::canonical_number(n)),
        Some(Value::Bool(b)) => Ok(if *b { "1" } else { "0" }.to_string()),
        Some(_) => Err(Reason::NonNumeric),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_in_order_of_first_appearance() {
        let book = CategoryBook::in_memory(&["mode".to_string()]);
        assert_eq!(book.code(0, "eco"), Ok(0.0));
        assert_eq!(book.code(0, "boost"), Ok(1.0));
        assert_eq!(book.code(0, "eco"), Ok(0.0));
        assert_eq!(book.lookup(0, "boost"), Some(1.0));
        assert_eq!(book.lookup(0, "off"), None);
        assert_eq!(book.code(1, "eco"), Err(Reason::NonNumeric));
        assert_eq!(
            category_of(Some(&serde_json::json!(2.0))).as_deref(),
            Ok("2")
        );
        assert_eq!(
            category_of(Some(&serde_json::json!("  "))),
            Err(Reason::MissingFeature)
        );
    }
}
