//! Payload decoding: one MQTT message (topic + JSON payload) becomes one
//! [`Sample`] by the pipeline's declared schema, salvaging what it can.
//!
//! Rules (what a device may send, and what becomes of it):
//! - a feature that is a JSON number, a numeric string (`"21.5"`) or a boolean
//!   (1/0) is read as `f32`;
//! - a feature that is absent, `null`, non-numeric (`"n/a"`), NaN or infinite
//!   is kept as a **missing value** (`f32::NAN` in [`Sample::features`],
//!   never 0) and its reason is reported;
//! - bare `NaN`, `Infinity`, `-Infinity` tokens (what Python's `json.dumps`
//!   writes) are not JSON; such a payload is read leniently so that its other
//!   fields are salvaged;
//! - a number literal beyond `f64` (`1e400`, `-1e400`), which serde_json
//!   refuses ("number out of range"), is likewise a non-finite value of its
//!   field only (reason `non_finite`), the rest being salvaged; the lenient
//!   reading is only tried once the strict parse failed;
//! - a leading UTF-8 byte order mark (`EF BB BF`, which some Windows tools
//!   write) is ignored;
//! - a sample is kept when at least one feature is present; a payload that is
//!   not a JSON object, is larger than the limit or has no usable feature is
//!   rejected;
//! - a device id (the topic level `device_level`) longer than
//!   [`MAX_DEVICE_BYTES`] rejects the message (`device_too_long`);
//! - a late label whose `sample_id_field` is present but not a sample id
//!   is rejected (`bad_sample_id`), not matched by device and time.

use serde::Deserialize;
use serde_json::Value;

/// What a model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// A class out of a fixed set; outputs are class probabilities.
    #[default]
    Classification,
    /// A real number.
    Regression,
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Task::Classification => "classification",
            Task::Regression => "regression",
        })
    }
}

/// How a pipeline's payloads are read: the part of a `[[pipelines]]` entry
/// the decoder needs (composed by `crate::config`).
#[derive(Debug, Clone, PartialEq)]
pub struct Schema {
    /// JSON paths of the features, in order.
    pub features: Vec<String>,
    /// JSON path of the label; empty: none.
    pub label: String,
    /// The classes a label may take; empty: any.
    pub classes: Vec<String>,
    /// Classes, or numbers for regression.
    pub task: Task,
    /// JSON path of the timestamp; empty: the arrival time.
    pub timestamp: String,
    pub timestamp_format: String,
    /// Topic level that holds the device id.
    pub device_level: i32,
    /// Field of a late label that holds the sample's id.
    pub sample_id_field: String,
    /// Features read as strings (categorical), each stored as its code in
    /// `categories` ([`super::categories`]).
    pub categorical: Vec<String>,
    /// The pipeline's category codes; `None` with categorical features:
    /// a book in memory.
    pub categories: Option<std::sync::Arc<super::categories::CategoryBook>>,
}

pub use crate::stats::Reason;
pub use crate::store::Sample;

/// The longest device id, bytes of UTF-8 (a topic level; MQTT allows 65,535
/// bytes in a whole topic). Cloud IoT registries cap theirs at 128
/// characters (AWS IoT thing names, Azure IoT Hub device ids); 256 leaves
/// room for a prefix or a MAC-and-serial id. Every stored sample holds its
/// device id twice (the record and the `by_time` index), and the per-device
/// state (windows, temporal features, anomaly rules) keys on it: a 60,000
/// character id sent in a loop would cost 120 kB of store per reading. A
/// longer id rejects the message ([`Reason::DeviceTooLong`]).
pub const MAX_DEVICE_BYTES: usize = 256;

/// A problem found in a payload: its reason and the field concerned ("" for
/// the whole payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub reason: Reason,
    pub field: String,
}

/// The result of decoding one payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The sample, unless the payload was rejected.
    pub sample: Option<Sample>,
    /// Everything that was wrong, in field order.
    pub problems: Vec<Problem>,
}

/// One step of a [`JsonPath`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// A field path into a JSON payload: `a.b.c`, `a.b[2]`, optionally led by `$.`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath {
    steps: Vec<Step>,
}

impl JsonPath {
    /// Parses a path.
    ///
    /// # Errors
    /// A message naming the path when it is empty or malformed.
    pub fn parse(path: &str) -> Result<Self, String> {
        let body = path.strip_prefix("$.").unwrap_or(path);
        let mut steps = Vec::new();
        for part in body.split('.') {
            let (key, mut rest) = match part.find('[') {
                Some(i) => (&part[..i], &part[i..]),
                None => (part, ""),
            };
            if key.is_empty() && (steps.is_empty() || rest.is_empty()) {
                return Err(format!("`{path}` is not a field path (a.b.c or a.b[2])"));
            }
            if !key.is_empty() {
                steps.push(Step::Key(key.to_string()));
            }
            while !rest.is_empty() {
                let close = rest
                    .find(']')
                    .ok_or_else(|| format!("`{path}`: unclosed `[`"))?;
                let idx: usize = rest[1..close]
                    .parse()
                    .map_err(|_| format!("`{path}`: `{}` is not an index", &rest[1..close]))?;
                steps.push(Step::Index(idx));
                rest = &rest[close + 1..];
                if !rest.is_empty() && !rest.starts_with('[') {
                    return Err(format!("`{path}`: unexpected `{rest}`"));
                }
            }
        }
        Ok(Self { steps })
    }

    /// The value at this path, if present.
    pub fn get<'a>(&self, root: &'a Value) -> Option<&'a Value> {
        self.steps.iter().try_fold(root, |v, step| match step {
            Step::Key(k) => v.get(k.as_str()),
            Step::Index(i) => v.get(*i),
        })
    }
}

/// The fields a decoder reads, as a tree of path steps, each path's end
/// numbered by its slot (a path given as `None` has a slot that stays empty;
/// an empty path, which config validation refuses, is the whole payload, as
/// [`JsonPath::get`] reads it).
///
/// [`Fields::parse`] reads a payload's JSON for those fields alone: the
/// values on a path are parsed into [`Value`]s as before, every other value
/// is checked and skipped (`IgnoredAny`), with no map or string built for
/// it (a `Value` of the whole payload was most of a decode's allocations).
/// Equal to [`JsonPath::get`] on the whole payload's `Value`: a repeated key
/// replaces what an earlier one held (as the map of a `Value` does); a key
/// step reads objects only, an index step arrays only; a path that ends
/// where another goes on holds the whole value. Skipped values are not
/// read, so a number beyond `f64` there needs no lenient reading (the
/// result is the one the lenient reading gives), and a `\u` escape that is
/// not a character (a lone surrogate) in a field not read no longer rejects
/// the payload; bytes that are not UTF-8 anywhere still do.
#[derive(Debug, Clone, Default)]
struct Fields {
    /// The slots of the paths that end here.
    ends: Vec<usize>,
    keys: Vec<(String, Fields)>,
    indices: Vec<(usize, Fields)>,
    /// Every slot at or below this node.
    below: Vec<usize>,
    /// Slots in all (the root's count).
    slots: usize,
}

impl Fields {
    fn new<'a>(paths: impl Iterator<Item = Option<&'a JsonPath>>) -> Self {
        let mut root = Fields::default();
        for (slot, path) in paths.enumerate() {
            root.slots = slot + 1;
            let Some(path) = path else { continue };
            let mut node = &mut root;
            for step in &path.steps {
                node = match step {
                    Step::Key(k) => {
                        let at = match node.keys.iter().position(|(key, _)| key == k) {
                            Some(at) => at,
                            None => {
                                node.keys.push((k.clone(), Fields::default()));
                                node.keys.len() - 1
                            }
                        };
                        &mut node.keys[at].1
                    }
                    Step::Index(i) => {
                        let at = match node.indices.iter().position(|(index, _)| index == i) {
                            Some(at) => at,
                            None => {
                                node.indices.push((*i, Fields::default()));
                                node.indices.len() - 1
                            }
                        };
                        &mut node.indices[at].1
                    }
                };
                node.below.push(slot);
            }
            node.ends.push(slot);
        }
        root
    }

    /// The payload's values at the paths, by slot: `None` when it is not
    /// JSON even leniently ([`parse_payload`]'s rules), `Some(None)` when it
    /// is not an object.
    fn parse(&self, payload: &[u8]) -> Option<Option<Vec<Option<Value>>>> {
        let payload = payload.strip_prefix(BOM).unwrap_or(payload);
        // Strings skipped unread are not checked for UTF-8 by serde_json.
        std::str::from_utf8(payload).ok()?;
        let read = |bytes: &[u8]| {
            let mut values = vec![None; self.slots];
            let mut de = serde_json::Deserializer::from_slice(bytes);
            let object = serde::de::DeserializeSeed::deserialize(
                Select {
                    node: self,
                    values: &mut values,
                },
                &mut de,
            )?;
            de.end()?;
            Ok::<_, serde_json::Error>(object.then_some(values))
        };
        match read(payload) {
            Ok(v) => Some(v),
            Err(e) if e.classify() == serde_json::error::Category::Syntax => {
                read(&lenient_tokens(payload)?).ok()
            }
            Err(_) => None,
        }
    }

    /// Fills the slots at and below this node from `v`, a value already
    /// parsed (a path that ends where another goes on).
    fn fill(&self, v: &Value, values: &mut [Option<Value>]) {
        self.fill_below(v, values);
        for &slot in &self.ends {
            values[slot] = Some(v.clone());
        }
    }

    /// As [`Fields::fill`], below this node only.
    fn fill_below(&self, v: &Value, values: &mut [Option<Value>]) {
        for (k, child) in &self.keys {
            if let Some(c) = v.get(k.as_str()) {
                child.fill(c, values);
            }
        }
        for (i, child) in &self.indices {
            if let Some(c) = v.get(*i) {
                child.fill(c, values);
            }
        }
    }
}

/// Reads the value at a node of [`Fields`]: whether it is an object (the
/// root must be).
struct Select<'a> {
    node: &'a Fields,
    values: &'a mut [Option<Value>],
}

impl<'de> serde::de::DeserializeSeed<'de> for Select<'_> {
    type Value = bool;

    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<bool, D::Error> {
        if !self.node.ends.is_empty() {
            let v = Value::deserialize(de)?;
            let object = v.is_object();
            self.node.fill_below(&v, self.values);
            if let Some((&last, rest)) = self.node.ends.split_last() {
                for &slot in rest {
                    self.values[slot] = Some(v.clone());
                }
                self.values[last] = Some(v);
            }
            return Ok(object);
        }
        de.deserialize_any(self)
    }
}

/// The index of the key among a node's keys, from a map key read without
/// allocating (escaped keys are compared unescaped).
struct KeyOf<'a>(&'a Fields);

impl<'de> serde::de::DeserializeSeed<'de> for KeyOf<'_> {
    type Value = Option<usize>;

    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<Option<usize>, D::Error> {
        de.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for KeyOf<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Option<usize>, E> {
        Ok(self.0.keys.iter().position(|(k, _)| k == s))
    }
}

impl<'de> serde::de::Visitor<'de> for Select<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while let Some(key) = map.next_key_seed(KeyOf(self.node))? {
            match key {
                Some(at) => {
                    let child = &self.node.keys[at].1;
                    // A repeated key replaces what the earlier one held.
                    for &slot in &child.below {
                        self.values[slot] = None;
                    }
                    map.next_value_seed(Select {
                        node: child,
                        values: &mut *self.values,
                    })?;
                }
                None => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(true)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        let mut i = 0;
        loop {
            let more = match self.node.indices.iter().find(|(index, _)| *index == i) {
                Some((_, child)) => seq
                    .next_element_seed(Select {
                        node: child,
                        values: &mut *self.values,
                    })?
                    .is_some(),
                None => seq.next_element::<serde::de::IgnoredAny>()?.is_some(),
            };
            if !more {
                return Ok(false);
            }
            i += 1;
        }
    }

    fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_str<E>(self, _: &str) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(false)
    }
}

/// Decodes payloads of one pipeline.
#[derive(Debug, Clone)]
pub struct Decoder {
    names: Vec<String>,
    features: Vec<JsonPath>,
    /// The fields [`Decoder::decode`] reads (features, then the label and
    /// the timestamp when declared), as one tree of path steps: a payload
    /// is parsed for those alone (see [`Fields`]).
    fields: Fields,
    label: Option<JsonPath>,
    timestamp: Option<JsonPath>,
    /// The timestamp formats tried after RFC 3339, parsed once: the
    /// pipeline's `timestamp_format`, then ISO 8601 with `T` and with a
    /// space (`chrono`'s `parse_from_str` would parse each format again for
    /// every payload; a profile of the ingest bench showed it). A format
    /// that does not parse is left out (it could match nothing).
    timestamp_formats: std::sync::Arc<[Vec<chrono::format::Item<'static>>]>,
    device_level: i32,
    max_payload_bytes: usize,
    classes: Vec<String>,
    task: Task,
    sample_id_field: String,
    /// Per feature, its index among the categorical fields.
    categorical: Vec<Option<usize>>,
    categories: Option<std::sync::Arc<super::categories::CategoryBook>>,
}

impl Decoder {
    /// A decoder for `pipeline`. Paths were checked by config validation;
    /// an unparseable one here never matches.
    pub fn new(pipeline: &Schema, max_payload_bytes: usize) -> Self {
        let path = |p: &str| JsonPath::parse(p).unwrap_or(JsonPath { steps: vec![] });
        let opt = |p: &str| (!p.is_empty()).then(|| path(p));
        let features: Vec<JsonPath> = pipeline.features.iter().map(|f| path(f)).collect();
        let label = opt(&pipeline.label);
        let timestamp = opt(&pipeline.timestamp);
        Self {
            names: pipeline.features.clone(),
            fields: Fields::new(
                features
                    .iter()
                    .map(Some)
                    .chain([label.as_ref(), timestamp.as_ref()]),
            ),
            features,
            label,
            timestamp,
            timestamp_formats: [
                pipeline.timestamp_format.as_str(),
                "%Y-%m-%dT%H:%M:%S%.f",
                "%Y-%m-%d %H:%M:%S%.f",
            ]
            .iter()
            .filter_map(|f| chrono::format::StrftimeItems::new(f).parse_to_owned().ok())
            .collect(),
            device_level: pipeline.device_level,
            max_payload_bytes,
            classes: pipeline.classes.clone(),
            task: pipeline.task,
            sample_id_field: pipeline.sample_id_field.clone(),
            categorical: pipeline
                .features
                .iter()
                .map(|f| pipeline.categorical.iter().position(|c| c == f))
                .collect(),
            categories: match &pipeline.categories {
                Some(book) => Some(book.clone()),
                None if pipeline.categorical.is_empty() => None,
                None => Some(std::sync::Arc::new(
                    super::categories::CategoryBook::in_memory(&pipeline.categorical),
                )),
            },
        }
    }

    /// Decodes one message. Never fails: problems are reported in [`Decoded`].
    ///
    /// `arrival_ms` (ms since the Unix epoch) is used when the payload has no
    /// readable timestamp.
    pub fn decode(&self, topic: &str, payload: &[u8], arrival_ms: i64) -> Decoded {
        let reject = |reason| Decoded {
            sample: None,
            problems: vec![Problem {
                reason,
                field: String::new(),
            }],
        };
        if payload.len() > self.max_payload_bytes {
            return reject(Reason::TooLarge);
        }
        let Some(device) = self.device(topic) else {
            return reject(Reason::DeviceTooLong);
        };
        let Some(values) = self.fields.parse(payload) else {
            return reject(Reason::NotJson);
        };
        let Some(values) = values else {
            return reject(Reason::NotObject);
        };
        let n = self.features.len();
        let mut problems = Vec::new();
        let mut present = 0;
        let features: Vec<f32> = values[..n]
            .iter()
            .zip(&self.names)
            .zip(&self.categorical)
            .map(
                |((found, name), cat)| match self.read(found.as_ref(), *cat) {
                    Ok(x) => {
                        present += 1;
                        x
                    }
                    Err(reason) => {
                        problems.push(Problem {
                            reason,
                            field: name.clone(),
                        });
                        f32::NAN
                    }
                },
            )
            .collect();
        if present == 0 {
            problems.push(Problem {
                reason: Reason::NoFeatures,
                field: String::new(),
            });
            return Decoded {
                sample: None,
                problems,
            };
        }
        let label = self.read_label(values[n].as_ref(), &mut problems);
        let timestamp_ms = match &self.timestamp {
            None => arrival_ms,
            Some(_) => match values[n + 1].as_ref().and_then(|v| self.read_timestamp(v)) {
                Some(t) => t,
                None => {
                    problems.push(Problem {
                        reason: Reason::BadTimestamp,
                        field: "timestamp".into(),
                    });
                    arrival_ms
                }
            },
        };
        Decoded {
            sample: Some(Sample {
                timestamp_ms,
                device: device.to_string(),
                features,
                label,
            }),
            problems,
        }
    }

    /// The device id of a message on `topic`: its level `device_level`
    /// ("" when the topic has no such level); `None` when it is longer than
    /// [`MAX_DEVICE_BYTES`].
    fn device<'t>(&self, topic: &'t str) -> Option<&'t str> {
        let device = usize::try_from(self.device_level)
            .ok()
            .and_then(|level| topic.split('/').nth(level))
            .unwrap_or("");
        (device.len() <= MAX_DEVICE_BYTES).then_some(device)
    }

    /// A feature: a number, or for a categorical one the code of its
    /// string ([`super::categories::category_of`]).
    fn read(&self, v: Option<&Value>, categorical: Option<usize>) -> Result<f32, Reason> {
        match (categorical, &self.categories) {
            (Some(field), Some(book)) => book.code(field, &super::categories::category_of(v)?),
            _ => read_feature(v),
        }
    }

    /// The label of a payload: strings, numbers (integral ones without a
    /// fraction) and booleans (1/0); bare NaN/Infinity, other types and
    /// labels outside the declared `classes` are problems. A regression
    /// label is [`regression_label`]'s.
    /// `found`: the value at the label's path, when the pipeline has one.
    fn read_label(&self, found: Option<&Value>, problems: &mut Vec<Problem>) -> Option<String> {
        self.label.as_ref()?;
        let label = match found {
            _ if self.task == Task::Regression => regression_label(found).map_err(|_| ()),
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.trim().is_empty() && !s.starts_with('\0') => {
                Ok(Some(s.trim().to_string()))
            }
            Some(Value::Number(n)) => Ok(Some(canonical_number(n))),
            Some(Value::Bool(b)) => Ok(Some(if *b { "1" } else { "0" }.to_string())),
            Some(_) => Err(()),
        };
        match label {
            Ok(Some(l)) if !self.classes.is_empty() && !self.classes.contains(&l) => Err(()),
            other => other,
        }
        .unwrap_or_else(|()| {
            problems.push(Problem {
                reason: Reason::BadLabel,
                field: "label".into(),
            });
            None
        })
    }

    /// Decodes a late label (a message on one of the pipeline's
    /// `label_topics`): the label, and the sample it belongs to, by
    /// `sample_id_field` or else by device (topic level) and timestamp.
    ///
    /// # Errors
    /// The [`Reason`] the message cannot be used.
    pub fn decode_late_label(
        &self,
        topic: &str,
        payload: &[u8],
    ) -> Result<(crate::store::LabelKey, String), Reason> {
        if payload.len() > self.max_payload_bytes {
            return Err(Reason::TooLarge);
        }
        let value = parse_payload(payload).ok_or(Reason::NotJson)?;
        if !value.is_object() {
            return Err(Reason::NotObject);
        }
        let mut problems = Vec::new();
        let label = self
            .read_label(
                self.label.as_ref().and_then(|p| p.get(&value)),
                &mut problems,
            )
            .ok_or(Reason::BadLabel)?;
        // A numeric string ("5") is read as a number, as a feature's is.
        // An id that is present but not a sample id names no sample: the
        // label is not matched by device and time instead.
        match value.get(self.sample_id_field.as_str()) {
            None | Some(Value::Null) => {}
            Some(v) => {
                let id = match v {
                    Value::String(s) => s.trim().parse::<u64>().ok(),
                    v => v.as_u64(),
                };
                return match id {
                    Some(id) => Ok((crate::store::LabelKey::Seq(id), label)),
                    None => Err(Reason::BadSampleId),
                };
            }
        }
        let device = self.device(topic).ok_or(Reason::DeviceTooLong)?;
        let timestamp_ms = self
            .timestamp
            .as_ref()
            .and_then(|p| p.get(&value))
            .and_then(|v| self.read_timestamp(v))
            .ok_or(Reason::BadTimestamp)?;
        Ok((
            crate::store::LabelKey::DeviceTime {
                device: device.to_string(),
                timestamp_ms,
            },
            label,
        ))
    }

    fn read_timestamp(&self, v: &Value) -> Option<i64> {
        match v {
            Value::Number(n) => epoch_to_ms(n.as_f64()?),
            Value::String(s) => {
                let s = s.trim();
                if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
                    return Some(t.timestamp_millis());
                }
                for items in self.timestamp_formats.iter() {
                    // As `NaiveDateTime::parse_from_str`, on parsed items.
                    let mut parsed = chrono::format::Parsed::new();
                    let t = chrono::format::parse(&mut parsed, s, items.iter())
                        .and_then(|()| parsed.to_naive_datetime_with_offset(0));
                    if let Ok(t) = t {
                        return Some(t.and_utc().timestamp_millis());
                    }
                }
                epoch_to_ms(s.parse::<f64>().ok()?)
            }
            _ => None,
        }
    }
}

/// Epoch seconds, or milliseconds when above 1e11 (year 5138 in seconds).
fn epoch_to_ms(x: f64) -> Option<i64> {
    if !x.is_finite() || x < 0.0 {
        return None;
    }
    let ms = if x > 1e11 { x } else { x * 1000.0 };
    (ms < 9.0e15).then_some(ms.round() as i64)
}

fn read_feature(v: Option<&Value>) -> Result<f32, Reason> {
    let x = match v {
        None | Some(Value::Null) => return Err(Reason::MissingFeature),
        Some(Value::Number(n)) => n.as_f64().ok_or(Reason::NonNumeric)?,
        Some(Value::Bool(b)) => f64::from(u8::from(*b)),
        Some(Value::String(s)) if s.starts_with('\0') => return Err(Reason::NonFinite),
        Some(Value::String(s)) => s.trim().parse::<f64>().map_err(|_| Reason::NonNumeric)?,
        Some(_) => return Err(Reason::NonNumeric),
    };
    let x = x as f32;
    if x.is_finite() {
        Ok(x)
    } else {
        Err(Reason::NonFinite)
    }
}

/// A regression label: a JSON number or a numeric string (`"1.5"`, trimmed),
/// finite as `f64`, in canonical form ([`canonical_number`]: `2.0` and `"2"`
/// are both `2`). `Ok(None)` when absent or `null` (an unlabelled sample);
/// `Err` for anything else: a boolean, a non-numeric string, NaN or ±∞ (bare
/// tokens or strings), an array, an object.
///
/// # Errors
/// [`Reason::BadLabel`] when the value is present but not a finite number.
pub fn regression_label(v: Option<&Value>) -> Result<Option<String>, Reason> {
    let x = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) if !s.starts_with('\0') => s.trim().parse::<f64>().ok(),
        Some(_) => None,
    };
    // from_f64 refuses NaN and ±∞.
    let n = x
        .and_then(serde_json::Number::from_f64)
        .ok_or(Reason::BadLabel)?;
    Ok(Some(canonical_number(&n)))
}

/// Integral numbers print without a fraction (`1`, not `1.0`), so that a
/// label sent as `1`, `1.0` or `"1"` is the same class.
pub fn canonical_number(n: &serde_json::Number) -> String {
    if let Some(i) = n.as_i64() {
        return i.to_string();
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => format!("{}", f as i64),
        _ => n.to_string(),
    }
}

/// The UTF-8 byte order mark, which some Windows tools put before a payload.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Parses a payload as JSON: strictly first (the path of every well-formed
/// payload); after a syntax error, once more leniently ([`lenient_tokens`]).
/// A leading [`BOM`] is skipped. `None` when not JSON even leniently.
fn parse_payload(payload: &[u8]) -> Option<Value> {
    let payload = payload.strip_prefix(BOM).unwrap_or(payload);
    match serde_json::from_slice::<Value>(payload) {
        Ok(v) => Some(v),
        Err(e) if e.classify() == serde_json::error::Category::Syntax => {
            serde_json::from_slice::<Value>(&lenient_tokens(payload)?).ok()
        }
        Err(_) => None,
    }
}

/// Rewrites the tokens outside strings that strict JSON refuses but that
/// stand for a non-finite number, as JSON strings starting with NUL
/// (`"\u0000NaN"`), so that the rest of the payload can be read:
/// - bare `NaN`, `Infinity` and `-Infinity` (Python's `json.dumps`);
/// - number literals beyond `f64` (`1e400`, `-1e400`, 400 digits), which
///   serde_json refuses with "number out of range". A literal is rewritten
///   only when it is well-formed JSON number syntax and serde_json itself
///   refuses it on its own, so both agree on where `f64` ends.
///
/// Strings (escapes included) are copied untouched. `None` when there is no
/// such token (the payload is broken in another way).
fn lenient_tokens(payload: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(payload.len() + 16);
    let (mut in_string, mut escaped, mut changed) = (false, false, false);
    let mut i = 0;
    // A string no sender writes (it starts with NUL), so the label and
    // feature readers can tell a rewritten token from real text.
    let mut rewrite = |out: &mut Vec<u8>, token: &[u8]| {
        out.extend_from_slice(br#""\u0000"#);
        out.extend_from_slice(token);
        out.push(b'"');
        changed = true;
    };
    while i < payload.len() {
        let b = payload[i];
        if in_string {
            out.push(b);
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if b == b'"' {
            in_string = true;
            out.push(b);
            i += 1;
            continue;
        }
        let rest = &payload[i..];
        if let Some(t) = [&b"-Infinity"[..], b"Infinity", b"NaN"]
            .into_iter()
            .find(|t| rest.starts_with(t))
        {
            rewrite(&mut out, t);
            i += t.len();
            continue;
        }
        if b == b'-' || b.is_ascii_digit() {
            let len = number_len(rest);
            if len > 0 {
                let number = &rest[..len];
                if serde_json::from_slice::<Value>(number).is_err() {
                    rewrite(&mut out, number);
                } else {
                    out.extend_from_slice(number);
                }
                i += len;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    changed.then_some(out)
}

/// The length of the JSON number literal at the start of `s`
/// (`-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`), 0 when there is none.
/// A malformed tail (`1.`, `1e`) is left out: it is not part of the literal.
fn number_len(s: &[u8]) -> usize {
    let digits = |from: usize| s[from..].iter().take_while(|b| b.is_ascii_digit()).count();
    let mut i = usize::from(s.first() == Some(&b'-'));
    match s.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i += digits(i),
        _ => return 0,
    }
    if s.get(i) == Some(&b'.') && digits(i + 1) > 0 {
        i += 1 + digits(i + 1);
    }
    if matches!(s.get(i), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(s.get(i + 1), Some(b'+' | b'-')));
        let n = digits(i + 1 + sign);
        if n > 0 {
            i += 1 + sign + n;
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PipelineConfig;

    fn decoder() -> Decoder {
        let p: PipelineConfig = toml::from_str(
            "name='p'\ntopics=['s/+/x']\nfeatures=['t', 'env.h', 'v[1]']\nlabel='y'\ntimestamp='ts'",
        )
        .unwrap();
        Decoder::new(&p.schema(), 1024)
    }

    fn reasons(d: &Decoded) -> Vec<Reason> {
        d.problems.iter().map(|p| p.reason).collect()
    }

    /// A late label whose sample id is not one was counted
    /// `bad_timestamp` (without a timestamp) or matched by device and time
    /// to whatever reading was there (with one). It is now rejected as
    /// `bad_sample_id`; a label without an id (or a null one) is matched by
    /// device and time as before.
    #[test]
    fn a_late_label_with_a_bad_sample_id_is_its_own_reason() {
        let dec = decoder();
        let by_time = Ok((
            crate::store::LabelKey::DeviceTime {
                device: "a".into(),
                timestamp_ms: 1_500_000_000_000,
            },
            "1".to_string(),
        ));
        for id in ["", r#""sample_id": null, "#] {
            let payload = format!(r#"{{{id}"y": 1, "ts": 1500000000}}"#);
            assert_eq!(
                dec.decode_late_label("s/a/x", payload.as_bytes()),
                by_time,
                "{payload}"
            );
        }
        for bad in [r#""x""#, "-1", "1.5", "{}"] {
            let payload = format!(r#"{{"sample_id": {bad}, "y": 1, "ts": 1500000000}}"#);
            assert_eq!(
                dec.decode_late_label("s/a/x", payload.as_bytes()),
                Err(Reason::BadSampleId),
                "{payload}"
            );
        }
        assert!(Reason::ALL.contains(&Reason::BadSampleId));
    }

    /// A device id (topic level) of 60,000 characters was stored as it
    /// came. Beyond MAX_DEVICE_BYTES the message is rejected
    /// (`device_too_long`); at the limit it is kept. A late label matched
    /// by device and time is rejected likewise; one matched by its sample
    /// id does not use the device.
    #[test]
    fn a_device_id_beyond_the_limit_rejects_the_message() {
        let dec = decoder();
        let payload = br#"{"t": 21.5, "env": {"h": 40}, "v": [0, 3], "y": 1, "ts": 1500000000}"#;
        let at_limit = "d".repeat(MAX_DEVICE_BYTES);
        let d = dec.decode(&format!("s/{at_limit}/x"), payload, 5);
        assert!(d.problems.is_empty(), "{:?}", d.problems);
        assert_eq!(d.sample.unwrap().device, at_limit);
        // 257 bytes, 60,000 bytes, and 129 two-byte characters (258 bytes).
        for long in [
            "d".repeat(MAX_DEVICE_BYTES + 1),
            "d".repeat(60_000),
            "é".repeat(129),
        ] {
            let topic = format!("s/{long}/x");
            let d = dec.decode(&topic, payload, 5);
            assert_eq!(d.sample, None);
            assert_eq!(reasons(&d), [Reason::DeviceTooLong]);
            assert!(Reason::DeviceTooLong.rejects());
            assert_eq!(
                dec.decode_late_label(&topic, br#"{"y": 1, "ts": 1500000000}"#),
                Err(Reason::DeviceTooLong)
            );
            assert_eq!(
                dec.decode_late_label(&topic, br#"{"sample_id": 4, "y": 1}"#),
                Ok((crate::store::LabelKey::Seq(4), "1".into()))
            );
        }
        assert_eq!(Reason::DeviceTooLong.as_str(), "device_too_long");
    }

    #[test]
    fn good_payload() {
        let d = decoder().decode(
            "s/dev7/x",
            br#"{"t": 21.5, "env": {"h": "40"}, "v": [0, 3], "y": 1.0, "ts": "2015-02-04 17:51:00"}"#,
            5,
        );
        assert!(d.problems.is_empty());
        let s = d.sample.unwrap();
        assert_eq!(s.features, vec![21.5, 40.0, 3.0]);
        assert_eq!(s.label.as_deref(), Some("1"));
        assert_eq!(s.device, "dev7");
        // 2015-02-04T17:51:00Z
        assert_eq!(s.timestamp_ms, 1_423_072_260_000);
    }

    #[test]
    fn salvages_fields_as_missing_never_zero() {
        let d = decoder().decode(
            "s/a/x",
            br#"{"t": "n/a", "env": {"h": null}, "v": [0, 2], "ts": 1423072260}"#,
            5,
        );
        assert_eq!(
            reasons(&d),
            vec![Reason::NonNumeric, Reason::MissingFeature]
        );
        let s = d.sample.unwrap();
        assert!(s.features[0].is_nan() && s.features[1].is_nan());
        assert_eq!(s.features[2], 2.0);
        assert_eq!(s.label, None);
        assert_eq!(s.timestamp_ms, 1_423_072_260_000);
    }

    #[test]
    fn bare_nan_is_salvaged() {
        let d = decoder().decode(
            "s/a/x",
            br#"{"t": NaN, "env": {"h": -Infinity}, "v": [1, 4], "note": "NaN inside"}"#,
            9,
        );
        assert_eq!(
            reasons(&d),
            vec![Reason::NonFinite, Reason::NonFinite, Reason::BadTimestamp]
        );
        let s = d.sample.unwrap();
        assert_eq!(s.features[2], 4.0);
        assert_eq!(s.timestamp_ms, 9);
    }

    #[test]
    fn rejections() {
        let dec = decoder();
        assert_eq!(
            reasons(&dec.decode("s/a/x", b"not json {", 0)),
            vec![Reason::NotJson]
        );
        assert_eq!(
            reasons(&dec.decode("s/a/x", b"[1,2]", 0)),
            vec![Reason::NotObject]
        );
        assert_eq!(
            reasons(&dec.decode("s/a/x", &[b' '; 1025], 0)),
            vec![Reason::TooLarge]
        );
        let d = dec.decode("s/a/x", br#"{"y": 1}"#, 0);
        assert!(d.sample.is_none());
        assert_eq!(d.problems.last().unwrap().reason, Reason::NoFeatures);
        // Overflowing f32 is non-finite, not a huge number.
        let d = dec.decode("s/a/x", br#"{"t": 1e300, "env": {"h": 1}, "v": [0, 1]}"#, 0);
        assert_eq!(reasons(&d)[0], Reason::NonFinite);
    }

    #[test]
    fn bad_labels_never_become_classes() {
        let p: PipelineConfig = toml::from_str(
            "name='p'\ntopics=['s/+/x']\nfeatures=['t']\nlabel='y'\nclasses=['0', '1']",
        )
        .unwrap();
        let dec = Decoder::new(&p.schema(), 1024);
        let label = |payload: &str| {
            let d = dec.decode("s/a/x", payload.as_bytes(), 0);
            (
                d.sample.unwrap().label,
                d.problems.iter().any(|p| p.reason == Reason::BadLabel),
            )
        };
        assert_eq!(label(r#"{"t": 1, "y": NaN}"#), (None, true));
        assert_eq!(label(r#"{"t": 1, "y": -Infinity}"#), (None, true));
        assert_eq!(
            label(r#"{"t": 1, "y": "n/a"}"#),
            (None, true),
            "not a declared class"
        );
        assert_eq!(label(r#"{"t": 1, "y": 1.5}"#), (None, true));
        assert_eq!(label(r#"{"t": 1, "y": true}"#), (Some("1".into()), false));
        assert_eq!(label(r#"{"t": 1, "y": 1.0}"#), (Some("1".into()), false));
        assert_eq!(label(r#"{"t": 1, "y": " 0 "}"#), (Some("0".into()), false));
        // A real string "NaN" is a feature error (non-finite), as is a bare NaN.
        let d = dec.decode("s/a/x", br#"{"t": "NaN", "u": NaN}"#, 0);
        assert_eq!(reasons(&d), vec![Reason::NonFinite, Reason::NoFeatures]);
    }

    #[test]
    fn regression_labels_are_finite_numbers_or_bad_labels() {
        let p: PipelineConfig = toml::from_str(
            "name='p'\ntopics=['s/+/x']\nfeatures=['t']\nlabel='y'\ntask='regression'",
        )
        .unwrap();
        let dec = Decoder::new(&p.schema(), 1024);
        let label = |payload: &str| {
            let d = dec.decode("s/a/x", payload.as_bytes(), 0);
            let bad = d.problems.iter().any(|p| p.reason == Reason::BadLabel);
            let s = d.sample.unwrap();
            assert_eq!(s.features, vec![1.0], "features are salvaged: {payload}");
            (s.label, bad)
        };
        let some = |l: &str| (Some(l.to_string()), false);
        assert_eq!(label(r#"{"t": 1, "y": 2.6}"#), some("2.6"));
        assert_eq!(label(r#"{"t": 1, "y": 2.0}"#), some("2"));
        assert_eq!(label(r#"{"t": 1, "y": -200}"#), some("-200"));
        assert_eq!(label(r#"{"t": 1, "y": " 0.75 "}"#), some("0.75"));
        assert_eq!(label(r#"{"t": 1, "y": "1e300"}"#), some("1e+300"));
        assert_eq!(label(r#"{"t": 1}"#), (None, false), "absent: unlabelled");
        assert_eq!(label(r#"{"t": 1, "y": null}"#), (None, false));
        for bad in [
            r#""high""#,
            r#""""#,
            "true",
            "NaN",
            r#""NaN""#,
            "-Infinity",
            r#""inf""#,
            "[1]",
            r#"{"v": 1}"#,
        ] {
            let payload = format!(r#"{{"t": 1, "y": {bad}}}"#);
            assert_eq!(label(&payload), (None, true), "{payload}");
        }
        // Late labels follow the same rule.
        assert_eq!(
            dec.decode_late_label("s/a/x", br#"{"sample_id": 3, "y": "x"}"#),
            Err(Reason::BadLabel)
        );
        assert_eq!(
            dec.decode_late_label("s/a/x", br#"{"sample_id": 3, "y": "4.5"}"#),
            Ok((crate::store::LabelKey::Seq(3), "4.5".into()))
        );
        // The prediction message's sample_id sent back as a string (as a
        // client that keeps ids as strings does) names the same sample;
        // before, it fell back to device and time and counted bad_timestamp.
        assert_eq!(
            dec.decode_late_label("s/a/x", br#"{"sample_id": " 3", "y": "4.5"}"#),
            Ok((crate::store::LabelKey::Seq(3), "4.5".into()))
        );
        // An id that is not one is its own reason (it was counted
        // bad_timestamp), with or without a timestamp to fall back on.
        for bad in [
            r#""-1""#,
            r#""1.5""#,
            r#""x""#,
            r#""""#,
            "-1",
            "1.5",
            "true",
            "[3]",
            "18446744073709551616",
        ] {
            let payload = format!(r#"{{"sample_id": {bad}, "y": "4.5"}}"#);
            assert_eq!(
                dec.decode_late_label("s/a/x", payload.as_bytes()),
                Err(Reason::BadSampleId),
                "{payload}"
            );
        }
        // No id (or null): by device and time, bad_timestamp without one.
        for id in ["", r#""sample_id": null, "#] {
            let payload = format!(r#"{{{id}"y": "4.5"}}"#);
            assert_eq!(
                dec.decode_late_label("s/a/x", payload.as_bytes()),
                Err(Reason::BadTimestamp),
                "{payload}"
            );
        }
        assert_eq!(Reason::BadSampleId.as_str(), "bad_sample_id");
        assert_eq!(
            regression_label(Some(&Value::from(1e300))),
            Ok(Some("1e+300".into()))
        );
    }

    #[test]
    fn timestamps_with_fractions_and_iso_without_zone() {
        let dec = decoder();
        for ts in [
            "2015-02-04 17:51:00.250",
            "2015-02-04T17:51:00.25",
            "2015-02-04T17:51:00.25Z",
        ] {
            let payload = format!(r#"{{"t": 1, "env": {{"h": 1}}, "v": [0, 1], "ts": "{ts}"}}"#);
            let d = dec.decode("s/a/x", payload.as_bytes(), 0);
            assert_eq!(d.sample.unwrap().timestamp_ms, 1_423_072_260_250, "{ts}");
        }
    }

    /// A pipeline's own `timestamp_format` (Air Quality's `10/03/2004
    /// 18.00.00`) first, ISO 8601 after it; a format that does not parse
    /// leaves the others working. Expected: Python's
    /// `datetime(2004, 3, 10, 18, tzinfo=timezone.utc).timestamp()`.
    #[test]
    fn the_pipelines_timestamp_format_then_iso() {
        let at = |format: &str, ts: &str| {
            let p: PipelineConfig = toml::from_str(&format!(
                "name='p'\ntopics=['s/+/x']\nfeatures=['T']\nlabel='y'\ntimestamp='Date'\n\
                 timestamp_format='{format}'"
            ))
            .unwrap();
            let payload = format!(r#"{{"Date": "{ts}", "T": 1}}"#);
            Decoder::new(&p.schema(), 4096)
                .decode("s/a/x", payload.as_bytes(), 7)
                .sample
                .unwrap()
                .timestamp_ms
        };
        assert_eq!(
            at("%d/%m/%Y %H.%M.%S", "10/03/2004 18.00.00"),
            1_078_941_600_000
        );
        assert_eq!(
            at("%d/%m/%Y %H.%M.%S", "2015-02-04 17:51:00"),
            1_423_072_260_000
        );
        // Not a format chrono parses: ISO still read; anything else is the
        // arrival time.
        assert_eq!(at("%Q", "2015-02-04 17:51:00"), 1_423_072_260_000);
        assert_eq!(at("%Q", "10/03/2004 18.00.00"), 7);
    }

    /// The occupancy schema: three features and a class label.
    fn occupancy() -> Decoder {
        let p: PipelineConfig = toml::from_str(
            "name='p'\ntopics=['s/+/x']\nfeatures=['Temperature', 'Humidity', 'Light']\n\
             label='Occupancy'\ntimestamp='Date'",
        )
        .unwrap();
        Decoder::new(&p.schema(), 4096)
    }

    #[test]
    fn a_leading_bom_is_ignored() {
        let dec = occupancy();
        let plain: &[u8] = br#"{"Date": "2015-02-04 17:51:00", "Temperature": 23.18, "Humidity": 27.27, "Light": 426, "Occupancy": 1}"#;
        let with_bom = [b"\xEF\xBB\xBF".as_slice(), plain].concat();
        let expected = dec.decode("s/room1/x", plain, 5);
        assert!(expected.problems.is_empty());
        assert_eq!(
            expected.sample.as_ref().unwrap().features,
            vec![23.18, 27.27, 426.0]
        );
        assert_eq!(dec.decode("s/room1/x", &with_bom, 5), expected);
        // Only one mark, and only at the start.
        let twice = [b"\xEF\xBB\xBF".as_slice(), &with_bom].concat();
        assert_eq!(
            reasons(&dec.decode("s/room1/x", &twice, 5)),
            vec![Reason::NotJson]
        );
        let inside = [b" \xEF\xBB\xBF".as_slice(), plain].concat();
        assert_eq!(
            reasons(&dec.decode("s/room1/x", &inside, 5)),
            vec![Reason::NotJson]
        );
        // A BOM-led payload that is otherwise lenient JSON: both apply.
        let lenient = b"\xEF\xBB\xBF{\"Temperature\": NaN, \"Humidity\": 20.5}";
        let d = dec.decode("s/room1/x", lenient, 5);
        assert_eq!(d.sample.unwrap().features[1], 20.5);
        // Late labels too.
        let p: PipelineConfig = toml::from_str(
            "name='p'\ntopics=['s/+/x']\nfeatures=['t']\nlabel='y'\nlabel_topics=['l/+']",
        )
        .unwrap();
        assert_eq!(
            Decoder::new(&p.schema(), 1024)
                .decode_late_label("l/a", b"\xEF\xBB\xBF{\"sample_id\": 7, \"y\": \"on\"}"),
            Ok((crate::store::LabelKey::Seq(7), "on".into()))
        );
    }

    #[test]
    fn numbers_beyond_f64_are_non_finite_fields_not_broken_payloads() {
        let dec = occupancy();
        // serde_json alone refuses the payload.
        assert!(serde_json::from_slice::<Value>(br#"{"a": 1e400}"#).is_err());
        let huge_integer = format!("1{}", "0".repeat(400));
        for number in [
            "1e400",
            "-1e400",
            "1E+400",
            "-2.5e999",
            huge_integer.as_str(),
        ] {
            let payload = format!(
                r#"{{"Date": "2015-02-04 17:51:00", "Temperature": {number}, "Humidity": 20.5, "Light": 426, "Occupancy": 1}}"#
            );
            let d = dec.decode("s/room1/x", payload.as_bytes(), 5);
            assert_eq!(
                d.problems,
                vec![Problem {
                    reason: Reason::NonFinite,
                    field: "Temperature".into()
                }],
                "{number}: counted once, as non_finite"
            );
            let s = d.sample.unwrap();
            assert!(s.features[0].is_nan(), "{number}: missing, never 0 or ±inf");
            assert_eq!(&s.features[1..], &[20.5, 426.0], "{number}");
            assert_eq!(s.label.as_deref(), Some("1"), "{number}");
            assert_eq!(s.timestamp_ms, 1_423_072_260_000, "{number}");
        }
        assert_eq!(Reason::NonFinite.as_str(), "non_finite");
        // Two such fields: one problem each, the third feature salvaged.
        let d = dec.decode(
            "s/room1/x",
            br#"{"Temperature": 1e400, "Humidity": -1e400, "Light": 1e-400}"#,
            5,
        );
        assert_eq!(
            reasons(&d),
            vec![Reason::NonFinite, Reason::NonFinite, Reason::BadTimestamp]
        );
        assert_eq!(
            d.sample.unwrap().features[2],
            0.0,
            "underflow is 0, as strictly"
        );
        // As a label or a timestamp: that field only.
        let d = dec.decode(
            "s/room1/x",
            br#"{"Temperature": 1, "Occupancy": 1e400, "Date": -1e400}"#,
            5,
        );
        assert_eq!(reasons(&d)[2..], [Reason::BadLabel, Reason::BadTimestamp]);
        let s = d.sample.unwrap();
        assert_eq!((s.features[0], s.label, s.timestamp_ms), (1.0, None, 5));
        // Otherwise broken payloads stay broken.
        for broken in [
            r#"{"Temperature": 1e400,"#,
            r#"{"Temperature": 1e400 "x"}"#,
            r#"{"Temperature": 1e400, "Humidity": 01}"#,
            r#"{"Temperature": 1e400, "Humidity": 1.}"#,
        ] {
            assert_eq!(
                reasons(&dec.decode("s/room1/x", broken.as_bytes(), 5)),
                vec![Reason::NotJson],
                "{broken}"
            );
        }
    }

    #[test]
    fn regression_labels_beyond_f64_are_bad_labels() {
        let p: PipelineConfig = toml::from_str(
            "name='p'\ntopics=['s/+/x']\nfeatures=['t']\nlabel='y'\ntask='regression'",
        )
        .unwrap();
        let d = Decoder::new(&p.schema(), 1024).decode("s/a/x", br#"{"t": 2, "y": -1e400}"#, 0);
        assert_eq!(reasons(&d), vec![Reason::BadLabel]);
        assert_eq!(d.sample.unwrap().features, vec![2.0]);
    }

    #[test]
    fn the_lenient_reading_leaves_strings_alone() {
        // Strings that look like numbers or NaN, escaped quotes and
        // backslashes, nesting: only the bare out-of-range numbers change.
        let payload = br#"{"note": "1e400", "q": "say \"1e400\" NaN \\", "bs": "\\", "n": {"s": "x\\\"-1e400", "k": [1e400, 2.5, -1e400, "Infinity"], "e": 1e-5}, "m": -0, "NaN": 3}"#;
        let v = parse_payload(payload).unwrap();
        assert_eq!(v["note"], "1e400");
        assert_eq!(v["q"], r#"say "1e400" NaN \"#);
        assert_eq!(v["bs"], r"\");
        assert_eq!(v["n"]["s"], r#"x\"-1e400"#);
        assert_eq!(v["n"]["k"][0], "\u{0}1e400");
        assert_eq!(v["n"]["k"][1], 2.5);
        assert_eq!(v["n"]["k"][2], "\u{0}-1e400");
        assert_eq!(v["n"]["k"][3], "Infinity");
        assert_eq!(v["n"]["e"], 1e-5);
        assert_eq!(v["NaN"], 3);
        // Every other number is copied as written.
        let fixed = lenient_tokens(br#"[1e400, 12.50e-3, -0.0, 7]"#).unwrap();
        assert_eq!(fixed, br#"["\u00001e400", 12.50e-3, -0.0, 7]"#);
        // Nothing to rewrite: no lenient reading.
        assert_eq!(lenient_tokens(br#"{"a": "1e400", "b": 1e300}"#), None);
        // Through the decoder: a feature that is the string "1e400" is
        // non-finite too (as f32 and f64), the other fields are salvaged.
        let d = occupancy().decode(
            "s/a/x",
            br#"{"Temperature": "1e400", "Humidity": 20.5, "note": "a \"1e400\" b", "Light": 1e400}"#,
            0,
        );
        assert_eq!(
            reasons(&d),
            vec![Reason::NonFinite, Reason::NonFinite, Reason::BadTimestamp]
        );
        assert_eq!(d.sample.unwrap().features[1], 20.5);
    }

    #[test]
    fn number_literals() {
        for (s, n) in [
            ("1e400,", 5),
            ("-1e400]", 6),
            ("0.5e-3}", 6),
            ("-0 ", 2),
            ("01", 1),
            ("1.", 1),
            ("1e", 1),
            ("1e+", 1),
            ("12.5E+7x", 7),
            ("-", 0),
            ("-x", 0),
            ("", 0),
        ] {
            assert_eq!(number_len(s.as_bytes()), n, "{s}");
        }
    }

    /// The values [`Fields::parse`] reads equal serde_json's whole `Value`
    /// of the payload read at each path ([`JsonPath::get`] on
    /// [`parse_payload`]'s value, the decoder's reading before it parsed
    /// only the declared fields): nested paths, indices, a path that ends
    /// where another goes on, repeated keys (the last wins), escaped keys,
    /// type mismatches, lenient tokens, a BOM, and what is not an object.
    #[test]
    fn selected_fields_equal_the_whole_values_paths() {
        let paths: Vec<JsonPath> = ["t", "env.h", "v[1]", "env", "v[1].w", "a.b[0][2]", "t"]
            .iter()
            .map(|p| JsonPath::parse(p).unwrap())
            .collect();
        let fields = Fields::new(paths.iter().map(Some).chain([None]));
        for payload in [
            r#"{"t": 21.5, "env": {"h": "40", "x": [1, {"y": 2}]}, "v": [0, 3], "y": 1.0}"#,
            r#"{"env": {"h": 1}, "env": {"g": 2}, "t": 1, "t": "2"}"#,
            r#"{"env": {"h": 1}, "env": 5, "v": {"1": 4}}"#,
            r#"{"v": [0, {"w": [7]}, 2], "a": {"b": [[0, 1, 2.5], 3]}}"#,
            r#"{"a": {"b": [[0, 1]]}, "v": [], "env": null, "t": [1]}"#,
            r#"{"\u0074": 3, "en\u0076": {"h": true}, "note": "\u00e9 \"}\""}"#,
            r#"{"t": NaN, "env": {"h": -Infinity}, "k": [1e400, "Infinity"]}"#,
            r#"{"t": 1e400, "x": 1e-400, "v": [1, -1e400]}"#,
            "\u{feff}{\"t\": 2}",
            "{}",
            "[1, 2, {\"t\": 1}]",
            "\"t\"",
            "3",
            "null",
        ] {
            let whole = parse_payload(payload.as_bytes()).unwrap();
            let expected: Vec<Option<Value>> = paths
                .iter()
                .map(|p| p.get(&whole).cloned())
                .chain([None])
                .collect();
            let read = fields.parse(payload.as_bytes()).unwrap();
            if whole.is_object() {
                assert_eq!(read, Some(expected), "{payload}");
            } else {
                assert_eq!(read, None, "{payload}: not an object");
            }
        }
        for broken in [
            &b"{\"t\": 1,"[..],
            b"{\"t\": 1} x",
            b"{\"t\": 01}",
            b"{\"note\": \"\xff\", \"t\": 1}",
            b"{\"note\": \"\\x\", \"t\": 1}",
        ] {
            assert!(parse_payload(broken).is_none());
            assert_eq!(fields.parse(broken), None, "{broken:?}");
        }
    }

    /// What parsing only the declared fields changes: a `\u` escape that is
    /// not a character (a lone surrogate) in a field the pipeline does not
    /// read no longer rejects the payload (it is not read); in a field it
    /// reads, it still does, as bytes that are not UTF-8 anywhere do.
    #[test]
    fn a_lone_surrogate_rejects_only_a_payload_whose_read_field_holds_it() {
        let dec = occupancy();
        let d = dec.decode(
            "s/a/x",
            br#"{"Temperature": 1, "Humidity": 2, "Light": 3, "note": "\ud800"}"#,
            0,
        );
        assert_eq!(d.sample.unwrap().features, vec![1.0, 2.0, 3.0]);
        assert_eq!(
            reasons(&dec.decode("s/a/x", br#"{"Temperature": "\ud800", "Humidity": 2}"#, 0)),
            vec![Reason::NotJson]
        );
        assert_eq!(
            reasons(&dec.decode("s/a/x", b"{\"Temperature\": 1, \"note\": \"\xc3\"}", 0)),
            vec![Reason::NotJson]
        );
    }

    #[test]
    fn paths() {
        assert!(JsonPath::parse("$.a.b[3][1]").is_ok());
        assert!(JsonPath::parse("a..b").is_err());
        assert!(JsonPath::parse("a[x]").is_err());
        assert!(JsonPath::parse("").is_err());
        let v: Value = serde_json::from_str(r#"{"a": {"b": [[0], [5, 6]]}}"#).unwrap();
        assert_eq!(
            JsonPath::parse("a.b[1][1]").unwrap().get(&v),
            Some(&Value::from(6))
        );
    }
}
