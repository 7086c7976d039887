//! Hyperparameter search within a budget: random search and successive
//! halving over per-family search spaces, scored by the pipeline's metric on
//! the temporal holdout (or by k-fold cross-validation), under a wall-time
//! budget and a thread count.
//!
//! - Random search (Bergstra & Bengio, "Random Search for Hyper-Parameter
//!   Optimization", JMLR 13, 2012): `max_trials` configurations, each
//!   trained on the whole training part.
//! - Successive halving (Jamieson & Talwalkar, "Non-stochastic Best Arm
//!   Identification and Hyperparameter Optimization", AISTATS 2016), as
//!   scikit-learn's `HalvingRandomSearchCV` with `factor = 3` (its default,
//!   [`ETA`]) and `resource = "n_samples"`: the sampled configurations are
//!   first trained on `n_train / 3^(rungs-1)` samples, the best third moves
//!   on to three times the samples, and so on until the last rung trains on
//!   every training sample. A rung's samples are spread evenly over the
//!   training part (time order kept, every regime represented); scikit-learn
//!   draws them at random.
//!
//! Under both strategies the configured settings of each candidate family are
//! the first trials, on every training sample: trial 0 is the configuration
//! the pipeline would train without a search, so the search never returns a
//! configuration that scores worse than it on the search's own scoring (the
//! first of equal scores wins). Trial 0 is never cut by the budget: a budget
//! smaller than one default training is exceeded by that training.
//!
//! Reproducibility: configurations are drawn from `fastrand` seeded with
//! `seed` before anything runs, every fit is seeded, and results are kept in
//! trial order whatever the thread that ran them; so the same seed, data and
//! `max_trials` give the same trials, scores and chosen model, when the
//! budget does not cut the search (a wall-time budget can end it at a
//! different trial from one run to the next).
//!
//! The budget: trials run on up to `threads` threads (`std::thread::scope`).
//! A trial is not started when its estimated duration (the mean time per
//! training sample of the finished trials of its family, else the slowest
//! family's, times its samples) would end after the search deadline; a
//! running trial is cancelled at the deadline through the `cancelled`
//! callback its fit polls, and recorded as cut. The search deadline is the
//! budget less an estimate of the final training through
//! [`super::train_dataset`] (3 × the longest full-sample trial: the
//! evaluated fit, the refit on every sample, ONNX export and the latency
//! measurement), so that search and final training together keep to
//! `budget_s`; the estimate is conservative, the search often stops early.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::card::ModelCard;
use super::forest::MaxFeatures;
use super::select::{self, Evaluation, Metric};
use super::{Dataset, Family, Task, TrainError, TrainSettings, Training, Trigger};
use crate::learn::settings::ModelConfig;

/// Successive halving's rate: a third of a rung's configurations move on,
/// with three times the samples (scikit-learn's `factor=3` default).
pub const ETA: usize = 3;

/// The final training's estimated cost, in multiples of the longest
/// full-sample trial: the evaluated fit, the refit on 1/(1 - holdout) as many
/// samples, two ONNX exports and the latency measurement (a forest on gas12
/// took 2.5× its trial, measured under load by `tests/tune.rs`; 4× leaves
/// room for a busy board).
const FINAL_FACTOR: f64 = 4.0;

/// How configurations are searched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// `max_trials` configurations, each on every training sample.
    #[default]
    Random,
    /// Rungs of growing sample counts; the best third of each moves on.
    SuccessiveHalving,
}

impl Strategy {
    /// The name used in config and cards.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Random => "random",
            Strategy::SuccessiveHalving => "successive_halving",
        }
    }
}

/// `[pipelines.model.search]`: hyperparameter search before training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchConfig {
    /// Search before every training (daemon and `edgeloop train`).
    /// `edgeloop tune` searches whatever this says. Default `false`.
    pub enabled: bool,
    /// `random` or `successive_halving`. Default `random`.
    pub strategy: Strategy,
    /// Wall-time budget of the search and the final training, seconds (> 0).
    /// Default 60.
    pub budget_s: f64,
    /// Configurations tried, the configured settings of each candidate
    /// family included (≥ 1). Default 20.
    pub max_trials: usize,
    /// Trials run in parallel (≥ 1). Default 1.
    pub threads: usize,
    /// Seed of the configurations drawn. Default 0.
    pub seed: u64,
    /// Ranges `[low, high]` replacing built-in ones, per family and
    /// parameter (see [`default_space`]), e.g. `mlp = { units = [8, 64] }`.
    pub ranges: BTreeMap<String, BTreeMap<String, [f64; 2]>>,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            strategy: Strategy::Random,
            budget_s: 60.0,
            max_trials: 20,
            threads: 1,
            seed: 0,
            ranges: BTreeMap::new(),
        }
    }
}

impl SearchConfig {
    /// Checks every key.
    ///
    /// # Errors
    /// A message that starts with the offending key relative to the section,
    /// e.g. `max_trials: must be at least 1` or `ranges.mlp.units: ...`.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.budget_s.is_finite() && self.budget_s > 0.0) {
            return Err(format!(
                "budget_s: {} must be a positive number of seconds",
                self.budget_s
            ));
        }
        if self.max_trials == 0 {
            return Err("max_trials: must be at least 1".into());
        }
        if self.threads == 0 {
            return Err("threads: must be at least 1".into());
        }
        for (family_name, params) in &self.ranges {
            let family: Family = family_name
                .parse()
                .map_err(|e| format!("ranges.{family_name}: {e}"))?;
            let space = default_space(family);
            for (param, &[low, high]) in params {
                let key = format!("ranges.{family_name}.{param}");
                let Some((_, range)) = space.iter().find(|(p, _)| p == param) else {
                    let known: Vec<&str> = space.iter().map(|(p, _)| *p).collect();
                    return Err(format!(
                        "{key}: `{family_name}` searches no parameter `{param}`; its parameters: [{}]",
                        known.join(", ")
                    ));
                };
                if !(low.is_finite() && high.is_finite() && low <= high) {
                    return Err(format!(
                        "{key}: [{low}, {high}] must be finite with low ≤ high"
                    ));
                }
                if matches!(range.scale, Scale::LogUniform | Scale::LogInt) && low <= 0.0 {
                    return Err(format!("{key}: a log-scale range needs low > 0; got {low}"));
                }
                for v in [low, high] {
                    let cfg = apply(&ModelConfig::default(), family, &[(param, v)]);
                    check_family(&cfg, family).map_err(|reason| format!("{key}: {v}: {reason}"))?;
                }
            }
        }
        Ok(())
    }

    /// The search space of `family`: the built-in ranges with this
    /// config's overrides.
    pub fn space(&self, family: Family) -> Vec<(&'static str, Range)> {
        let mut space = default_space(family);
        if let Some(over) = self.ranges.get(family.name()) {
            for (name, range) in &mut space {
                if let Some(&[low, high]) = over.get(*name) {
                    range.low = low;
                    range.high = high;
                }
            }
        }
        space
    }
}

/// How a parameter's range is sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// Uniform over `[low, high]`.
    Uniform,
    /// Log-uniform over `[low, high]` (low > 0).
    LogUniform,
    /// Uniform over the integers of `[low, high]`.
    Int,
    /// Log-uniform over the integers of `[low, high]` (low ≥ 1).
    LogInt,
}

/// A parameter's range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    pub low: f64,
    pub high: f64,
    pub scale: Scale,
}

impl Range {
    fn sample(&self, rng: &mut fastrand::Rng) -> f64 {
        let (low, high) = (self.low, self.high);
        let u = rng.f64();
        match self.scale {
            Scale::Uniform => low + u * (high - low),
            Scale::LogUniform => (low.ln() + u * (high.ln() - low.ln())).exp(),
            Scale::Int => rng.i64(low.round() as i64..=high.round() as i64) as f64,
            Scale::LogInt => {
                let v = (low.ln() + u * ((high + 1.0).ln() - low.ln()))
                    .exp()
                    .floor();
                v.clamp(low.round(), high.round())
            }
        }
    }
}

/// The built-in search space of `family`: parameter name (in the family's
/// config section; `mlp`'s `layers` × `units` make `hidden_layers`) and
/// range. `linear` has nothing to search.
///
/// | family   | parameter          | range        | scale       |
/// |----------|--------------------|--------------|-------------|
/// | logistic | `l2`               | 1e-6 .. 0.1  | log-uniform |
/// | ridge    | `alpha`            | 1e-3 .. 1e3  | log-uniform |
/// | svm      | `c`                | 1e-3 .. 100  | log-uniform |
/// | mlp      | `layers`           | 1 .. 2       | integer     |
/// | mlp      | `units`            | 8 .. 128     | log-integer |
/// | mlp      | `learning_rate`    | 1e-4 .. 1e-2 | log-uniform |
/// | mlp      | `l2`               | 1e-6 .. 1e-2 | log-uniform |
/// | tree     | `max_depth`        | 2 .. 20      | integer     |
/// | tree     | `min_samples_leaf` | 1 .. 50      | log-integer |
/// | forest   | `n_trees`          | 10 .. 100    | log-integer |
/// | forest   | `max_depth`        | 4 .. 20      | integer     |
/// | forest   | `max_features`     | 0.1 .. 1     | uniform     |
pub fn default_space(family: Family) -> Vec<(&'static str, Range)> {
    let r = |low, high, scale| Range { low, high, scale };
    match family {
        Family::Logistic => vec![("l2", r(1e-6, 0.1, Scale::LogUniform))],
        Family::Ridge => vec![("alpha", r(1e-3, 1e3, Scale::LogUniform))],
        Family::Svm => vec![("c", r(1e-3, 100.0, Scale::LogUniform))],
        Family::Mlp => vec![
            ("layers", r(1.0, 2.0, Scale::Int)),
            ("units", r(8.0, 128.0, Scale::LogInt)),
            ("learning_rate", r(1e-4, 1e-2, Scale::LogUniform)),
            ("l2", r(1e-6, 1e-2, Scale::LogUniform)),
        ],
        Family::Tree => vec![
            ("max_depth", r(2.0, 20.0, Scale::Int)),
            ("min_samples_leaf", r(1.0, 50.0, Scale::LogInt)),
        ],
        Family::Forest => vec![
            ("n_trees", r(10.0, 100.0, Scale::LogInt)),
            ("max_depth", r(4.0, 20.0, Scale::Int)),
            ("max_features", r(0.1, 1.0, Scale::Uniform)),
        ],
        Family::Linear | Family::Auto | Family::Ensemble => vec![],
    }
}

/// `cfg` with `family` set and `values` applied to its section.
fn apply(cfg: &ModelConfig, family: Family, values: &[(&str, f64)]) -> ModelConfig {
    let mut c = cfg.clone();
    c.family = family;
    let (mut layers, mut units) = (c.mlp.hidden_layers.len(), None);
    for &(name, v) in values {
        match (family, name) {
            (Family::Logistic, "l2") => c.l2 = v,
            (Family::Ridge, "alpha") => c.ridge.alpha = v,
            (Family::Svm, "c") => c.svm.c = v,
            (Family::Mlp, "layers") => layers = v as usize,
            (Family::Mlp, "units") => units = Some(v as usize),
            (Family::Mlp, "learning_rate") => c.mlp.learning_rate = v,
            (Family::Mlp, "l2") => c.mlp.l2 = v,
            (Family::Tree, "max_depth") => c.tree.max_depth = v as i64,
            (Family::Tree, "min_samples_leaf") => c.tree.min_samples_leaf = v as i64,
            (Family::Forest, "n_trees") => c.forest.n_trees = v as i64,
            (Family::Forest, "max_depth") => c.forest.max_depth = v as i64,
            (Family::Forest, "max_features") => c.forest.max_features = MaxFeatures::Fraction(v),
            _ => {}
        }
    }
    if let Some(units) = units {
        c.mlp.hidden_layers = vec![units; layers];
    } else if layers != c.mlp.hidden_layers.len() {
        let width = c.mlp.hidden_layers.first().copied().unwrap_or(32);
        c.mlp.hidden_layers = vec![width; layers];
    }
    c
}

/// The family's settings a configuration is checked against.
fn check_family(cfg: &ModelConfig, family: Family) -> Result<(), String> {
    let strip = |r: Result<(), String>| {
        r.map_err(|e| {
            e.split_once(": ")
                .map_or(e.clone(), |(_, reason)| reason.to_string())
        })
    };
    match family {
        Family::Logistic if !(cfg.l2.is_finite() && cfg.l2 > 0.0) => Err("must be positive".into()),
        Family::Ridge if cfg.ridge.alpha.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) => {
            Err("must be positive".into())
        }
        Family::Mlp => strip(cfg.mlp.validate()),
        Family::Tree => strip(cfg.tree.validate()),
        Family::Forest => strip(cfg.forest.validate()),
        Family::Svm => strip(cfg.svm.validate()),
        _ => Ok(()),
    }
}

/// The searched settings of `family` in `cfg`, as config keys of its
/// section (`mlp`: `hidden_layers`, not `layers` × `units`).
pub fn params(cfg: &ModelConfig, family: Family) -> serde_json::Value {
    use serde_json::json;
    match family {
        Family::Logistic => json!({ "l2": cfg.l2 }),
        Family::Ridge => json!({ "alpha": cfg.ridge.alpha }),
        Family::Svm => json!({ "c": cfg.svm.c }),
        Family::Mlp => json!({
            "hidden_layers": cfg.mlp.hidden_layers,
            "learning_rate": cfg.mlp.learning_rate,
            "l2": cfg.mlp.l2,
        }),
        Family::Tree => json!({
            "max_depth": cfg.tree.max_depth,
            "min_samples_leaf": cfg.tree.min_samples_leaf,
        }),
        Family::Forest => json!({
            "n_trees": cfg.forest.n_trees,
            "max_depth": cfg.forest.max_depth,
            "max_features": cfg.forest.max_features,
        }),
        Family::Linear | Family::Auto | Family::Ensemble => json!({}),
    }
}

/// One evaluated configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// Position in the search, from 0 (the configured settings).
    pub id: usize,
    /// The configuration (successive halving evaluates one at several rungs);
    /// the first ones are each candidate family's configured settings.
    pub config: usize,
    pub family: Family,
    /// The searched settings, as keys of the family's config section.
    pub params: serde_json::Value,
    /// Successive halving's rung (0: fewest samples); `None` outside a
    /// bracket (configured settings, random search).
    pub rung: Option<usize>,
    /// Training samples the trial was fit on (its resource).
    pub n_samples: usize,
    /// The metric on the holdout, or the cross-validation mean; `None` when
    /// cut or failed.
    pub score: Option<f64>,
    /// Wall-clock time of the trial, milliseconds.
    pub wall_ms: f64,
    /// Cancelled at the deadline.
    pub cut: bool,
    /// Why the fit failed (e.g. a rung's samples lack a class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Peak resident memory of the process while this trial ran, bytes
    /// (`edgeloop tune`, as `edgeloop train` measures each candidate:
    /// `TrainSettings::peak_rss`): what the process held already (the data)
    /// plus what the trial took, and, with `search.threads` above 1, what
    /// the trials running beside it took. `None` in the daemon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_bytes: Option<u64>,
}

/// What a search did, for the chosen model's card (`search`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchSummary {
    pub strategy: Strategy,
    /// The wall-time budget, seconds.
    pub budget_s: f64,
    pub max_trials: usize,
    pub threads: usize,
    pub seed: u64,
    /// The metric trials were scored by, and on what (`holdout`, `kfold`).
    pub metric: String,
    pub evaluation: Evaluation,
    /// Trials run (successive halving counts each rung's), cut ones included.
    pub trials: usize,
    /// Trials cancelled at the deadline.
    pub cut: usize,
    /// Wall-clock time of the search (without the final training), ms.
    pub elapsed_ms: f64,
    /// Score of trial 0, the configured settings.
    pub default_score: Option<f64>,
    /// The chosen trial (the best full-sample score, the first on ties).
    pub best: Option<Trial>,
}

/// A finished search: every trial in order, its summary, and the settings
/// the chosen trial stands for (`family` set to its family; the search
/// itself disabled), ready for [`super::train_dataset`].
#[derive(Debug, Clone)]
pub struct SearchOutcome {
    pub trials: Vec<Trial>,
    pub summary: SearchSummary,
    pub config: ModelConfig,
}

/// A search and the training of its best configuration.
#[derive(Debug, Clone)]
pub struct Tuned {
    pub trials: Vec<Trial>,
    pub training: Training,
}

/// The daemon's hook in [`super::train_dataset`]: with
/// `settings.model.search.enabled`, searches and returns the settings to
/// train with and the summary for the card; `None` otherwise. The search
/// scores on the split of a first training (no champion); with a champion,
/// `train_dataset` then also holds out every 10th older sample.
///
/// # Errors
/// As [`search`].
pub fn tuned_config(
    settings: &TrainSettings<'_>,
    data: &Dataset,
    cancelled: &dyn Fn() -> bool,
) -> Result<Option<(ModelConfig, SearchSummary)>, TrainError> {
    if !settings.model.search.enabled {
        return Ok(None);
    }
    let outcome = search(settings, data, cancelled, &|_| {})?;
    let s = &outcome.summary;
    tracing::info!(
        pipeline = settings.pipeline,
        strategy = s.strategy.name(),
        trials = s.trials,
        cut = s.cut,
        elapsed_ms = s.elapsed_ms,
        default_score = s.default_score,
        best_score = s.best.as_ref().and_then(|b| b.score),
        best_family = s.best.as_ref().map(|b| b.family.name()),
        "Hyperparameter search done."
    );
    Ok(Some((outcome.config, outcome.summary)))
}

/// Searches `settings.model.search`'s space and trains the best
/// configuration through [`super::train_dataset`] (the card gets `search`).
/// `progress` is told each trial as it finishes (on the calling thread).
///
/// # Errors
/// As [`search`] and [`super::train_dataset`].
pub fn tune(
    settings: &TrainSettings<'_>,
    data: &Dataset,
    version: u32,
    trigger: Trigger,
    champion: Option<(u32, super::Champion<'_>)>,
    cancelled: &dyn Fn() -> bool,
    progress: &dyn Fn(&Trial),
) -> Result<Tuned, TrainError> {
    let outcome = search(settings, data, cancelled, progress)?;
    let tuned = TrainSettings {
        model: &outcome.config,
        ..*settings
    };
    let mut training =
        super::train_dataset(&tuned, data, None, version, trigger, champion, cancelled)?;
    training.chosen.card.search = Some(outcome.summary.clone());
    for card in &mut training.candidates {
        card.search = Some(outcome.summary.clone());
    }
    Ok(Tuned {
        trials: outcome.trials,
        training,
    })
}

/// One planned trial.
struct Job {
    config: usize,
    family: Family,
    cfg: ModelConfig,
    params: serde_json::Value,
    rung: Option<usize>,
    n_samples: usize,
    /// Not cut by the deadline (trial 0).
    exempt: bool,
}

/// Runs the search of `settings.model.search` on `data`: the same temporal
/// holdout as [`super::train_dataset`] without a champion (the newest
/// `holdout_fraction`), trials fit on the rest and scored by the pipeline's
/// metric on the holdout, or by the k-fold mean over the rest with
/// `evaluation = "kfold"`. `cancelled` is polled on the calling thread
/// every 10 ms; `progress` is told each finished trial there.
///
/// # Errors
/// [`TrainError::Empty`] with fewer than 2 samples,
/// [`TrainError::TooFewClasses`] when the training part lacks two classes,
/// [`TrainError::Unsupported`] as [`super::candidate_families`],
/// [`TrainError::Cancelled`] when `cancelled` said so.
pub fn search(
    settings: &TrainSettings<'_>,
    data: &Dataset,
    cancelled: &dyn Fn() -> bool,
    progress: &dyn Fn(&Trial),
) -> Result<SearchOutcome, TrainError> {
    let started = Instant::now();
    let base = settings.model;
    let sc = &base.search;
    let task = data.task;
    if data.len() < 2 {
        return Err(TrainError::Empty);
    }
    let metric = base.metric.unwrap_or(Metric::default_for(task));
    let (train, holdout) = data.temporal_split(base.holdout_fraction);
    if task == Task::Classification {
        let present = train.class_composition().len();
        if present < 2 {
            return Err(TrainError::TooFewClasses(present));
        }
    }
    let families = super::candidate_families(base, task)?;
    let n_train = train.len();
    let mut trial_cfg = base.clone();
    trial_cfg.search.enabled = false;
    if sc.threads > 1 {
        // The forest's model does not depend on its thread count; trials
        // already run in parallel.
        trial_cfg.forest.n_jobs = 1;
    }
    // Every configuration is drawn before anything runs.
    let mut configs: Vec<(Family, ModelConfig)> = families
        .iter()
        .take(sc.max_trials)
        .map(|&f| (f, apply(&trial_cfg, f, &[])))
        .collect();
    let mut rng = fastrand::Rng::with_seed(sc.seed);
    while configs.len() < sc.max_trials {
        let family = families[rng.usize(..families.len())];
        let values: Vec<(&str, f64)> = sc
            .space(family)
            .iter()
            .map(|(name, range)| (*name, range.sample(&mut rng)))
            .collect();
        configs.push((family, apply(&trial_cfg, family, &values)));
    }
    let job = |config: usize, rung: Option<usize>, n_samples: usize| {
        let (family, cfg) = &configs[config];
        Job {
            config,
            family: *family,
            cfg: cfg.clone(),
            params: params(cfg, *family),
            rung,
            n_samples,
            exempt: config == 0 && rung.is_none(),
        }
    };
    let runner = Runner {
        train: &train,
        holdout: &holdout,
        features: settings.features,
        metric,
        evaluation: base.evaluation,
        started,
        budget: Duration::from_secs_f64(sc.budget_s),
        reserve_ms: AtomicU64::new(0f64.to_bits()),
        rates: Mutex::new(Vec::new()),
        abort: AtomicBool::new(false),
        n_train,
        threads: sc.threads,
        peak_rss: settings.peak_rss,
    };
    let n_defaults = families.len().min(sc.max_trials);
    let mut trials: Vec<Trial> = Vec::new();
    let run = |jobs: Vec<Job>, trials: &mut Vec<Trial>| -> Result<usize, TrainError> {
        let first = trials.len();
        let done = runner.run(&jobs, first, cancelled, progress);
        if runner.abort.load(Ordering::Relaxed) {
            return Err(TrainError::Cancelled);
        }
        let skipped = jobs.len() - done.len();
        trials.extend(done);
        Ok(skipped)
    };
    match sc.strategy {
        Strategy::Random => {
            let jobs = (0..configs.len()).map(|c| job(c, None, n_train)).collect();
            run(jobs, &mut trials)?;
        }
        Strategy::SuccessiveHalving => {
            let jobs = (0..n_defaults).map(|c| job(c, None, n_train)).collect();
            run(jobs, &mut trials)?;
            let min_resource = min_resource(data, base);
            let mut alive: Vec<usize> = (n_defaults..configs.len()).collect();
            let plan = halving_plan(alive.len(), n_train, min_resource);
            for (rung, &(size, n_samples)) in plan.iter().enumerate() {
                debug_assert_eq!(size, alive.len());
                let jobs = alive
                    .iter()
                    .map(|&c| job(c, Some(rung), n_samples))
                    .collect();
                let first = trials.len();
                if run(jobs, &mut trials)? > 0 {
                    break;
                }
                let mut ranked: Vec<&Trial> = trials[first..].iter().collect();
                ranked.sort_by(|a, b| rank(metric, a, b));
                let keep = plan.get(rung + 1).map_or(0, |&(n, _)| n);
                alive = ranked.iter().take(keep).map(|t| t.config).collect();
                alive.sort_unstable();
            }
        }
    }
    let best = trials
        .iter()
        .filter(|t| t.n_samples == n_train && t.score.is_some())
        .reduce(|best, t| match (t.score, best.score) {
            (Some(a), Some(b)) if metric.better(a, b) => t,
            _ => best,
        })
        .cloned();
    let mut config = match &best {
        Some(b) => configs[b.config].1.clone(),
        None => configs[0].1.clone(),
    };
    config.forest.n_jobs = base.forest.n_jobs;
    let summary = SearchSummary {
        strategy: sc.strategy,
        budget_s: sc.budget_s,
        max_trials: sc.max_trials,
        threads: sc.threads,
        seed: sc.seed,
        metric: metric.name().into(),
        evaluation: base.evaluation,
        trials: trials.len(),
        cut: trials.iter().filter(|t| t.cut).count(),
        elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
        default_score: trials.first().and_then(|t| t.score),
        best,
    };
    Ok(SearchOutcome {
        trials,
        summary,
        config,
    })
}

/// Best first by `metric`, trials without a score last, then in trial order.
fn rank(metric: Metric, a: &Trial, b: &Trial) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    match (a.score, b.score) {
        (Some(x), Some(y)) if metric.better(x, y) => Less,
        (Some(x), Some(y)) if metric.better(y, x) => Greater,
        (Some(_), None) => Less,
        (None, Some(_)) => Greater,
        _ => a.id.cmp(&b.id),
    }
}

/// Fewest samples a rung trains on: scikit-learn's `min_resources =
/// "smallest"` (2 per split and class; a holdout is one split).
fn min_resource(data: &Dataset, cfg: &ModelConfig) -> usize {
    let splits = match cfg.evaluation {
        Evaluation::Holdout => 1,
        Evaluation::Kfold => cfg.folds,
    };
    2 * splits * data.classes.len().max(1)
}

/// Successive halving's rungs for `n` configurations: `(configurations,
/// samples)` per rung. Rungs: `1 + ⌊log₃ n⌋`, fewer when the first would
/// train on under `min_resource` samples (scikit-learn's
/// `n_required_iterations` and `n_possible_iterations`); rung `k` keeps
/// `⌈n_{k-1} / 3⌉` configurations and trains on `⌊n_train / 3^(last-k)⌋`
/// samples, the last on all `n_train`.
pub fn halving_plan(n: usize, n_train: usize, min_resource: usize) -> Vec<(usize, usize)> {
    if n == 0 {
        return vec![];
    }
    let log = |mut v: usize| {
        let mut k = 0;
        while v >= ETA {
            v /= ETA;
            k += 1;
        }
        k
    };
    let rungs = 1 + log(n).min(log(n_train / min_resource.max(1)));
    let mut plan = Vec::with_capacity(rungs);
    let mut size = n;
    for k in 0..rungs {
        plan.push((size, n_train / ETA.pow((rungs - 1 - k) as u32)));
        size = size.div_ceil(ETA);
    }
    plan
}

/// Nice value of the search's trial threads: below ingest, serving and the
/// async runtime, which keep the default 0.
pub const TRIAL_NICE: i32 = 10;

/// Lowers the calling thread's scheduling priority to [`TRIAL_NICE`]
/// (`setpriority(PRIO_PROCESS, 0, …)`; on Linux the nice value is per
/// thread, so only this trial thread is affected). Best effort: a failure
/// leaves the priority as it was.
fn lower_priority() {
    // SAFETY: setpriority reads its integer arguments only.
    #[cfg(target_os = "linux")]
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, TRIAL_NICE);
    }
}

/// Runs trials on threads, keeps the time budget.
struct Runner<'a> {
    train: &'a Dataset,
    holdout: &'a Dataset,
    features: &'a [String],
    metric: Metric,
    evaluation: Evaluation,
    started: Instant,
    budget: Duration,
    /// Estimated final training, ms (f64 bits).
    reserve_ms: AtomicU64,
    /// Milliseconds per training sample of finished trials, by family.
    rates: Mutex<Vec<(Family, f64)>>,
    /// The caller cancelled.
    abort: AtomicBool,
    n_train: usize,
    threads: usize,
    /// Measure each trial's peak resident memory ([`Trial::peak_rss_bytes`]).
    peak_rss: bool,
}

impl Runner<'_> {
    fn deadline(&self) -> Instant {
        let reserve = f64::from_bits(self.reserve_ms.load(Ordering::Relaxed));
        self.started
            + self
                .budget
                .saturating_sub(Duration::from_secs_f64(reserve / 1e3))
    }

    /// Estimated duration of `job` from the finished trials.
    fn estimate(&self, job: &Job) -> Duration {
        let rates = self.rates.lock().unwrap_or_else(|e| e.into_inner());
        let same: Vec<f64> = rates
            .iter()
            .filter(|(f, _)| *f == job.family)
            .map(|(_, r)| *r)
            .collect();
        let rate = if same.is_empty() {
            rates.iter().map(|(_, r)| *r).fold(0.0, f64::max)
        } else {
            same.iter().sum::<f64>() / same.len() as f64
        };
        Duration::from_secs_f64(rate * job.n_samples as f64 / 1e3)
    }

    /// Runs `jobs` (ids from `first`), returning the trials started, in job
    /// order; a job that would not finish before the deadline is skipped.
    fn run(
        &self,
        jobs: &[Job],
        first: usize,
        cancelled: &dyn Fn() -> bool,
        progress: &dyn Fn(&Trial),
    ) -> Vec<Trial> {
        let next = AtomicUsize::new(0);
        let mut slots: Vec<Option<Trial>> = vec![None; jobs.len()];
        std::thread::scope(|s| {
            let (tx, rx) = mpsc::channel::<(usize, Trial)>();
            for _ in 0..self.threads.min(jobs.len()) {
                let (tx, next) = (tx.clone(), &next);
                s.spawn(move || {
                    lower_priority();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(job) = jobs.get(i) else { break };
                        if self.abort.load(Ordering::Relaxed) {
                            break;
                        }
                        if !job.exempt && Instant::now() + self.estimate(job) > self.deadline() {
                            continue;
                        }
                        let trial = self.trial(job, first + i);
                        if tx.send((i, trial)).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(tx);
            loop {
                match rx.recv_timeout(Duration::from_millis(10)) {
                    Ok((i, trial)) => {
                        progress(&trial);
                        slots[i] = Some(trial);
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
                if cancelled() {
                    self.abort.store(true, Ordering::Relaxed);
                }
            }
        });
        // Trial ids count the trials run, in job order.
        let mut out: Vec<Trial> = slots.into_iter().flatten().collect();
        for (k, t) in out.iter_mut().enumerate() {
            t.id = first + k;
        }
        out
    }

    fn trial(&self, job: &Job, id: usize) -> Trial {
        let rss = self.peak_rss.then(super::train::RssPeak::start).flatten();
        let t0 = Instant::now();
        let train: Cow<Dataset> = if job.n_samples >= self.n_train {
            Cow::Borrowed(self.train)
        } else {
            let n = self.n_train;
            let idx: Vec<usize> = (0..job.n_samples).map(|i| i * n / job.n_samples).collect();
            Cow::Owned(self.train.select(&idx))
        };
        let cancel = || {
            self.abort.load(Ordering::Relaxed) || (!job.exempt && Instant::now() >= self.deadline())
        };
        let result = match self.evaluation {
            Evaluation::Holdout => {
                super::fit_model(job.family, &job.cfg, &train, self.features, None, &cancel)
                    .map(|m| select::score(&m, self.holdout, self.metric))
            }
            Evaluation::Kfold => super::cross_validate(
                job.family,
                &job.cfg,
                &train,
                self.features,
                self.metric,
                &cancel,
            )
            .map(|cv| Some(cv.mean)),
        };
        let wall_ms = t0.elapsed().as_secs_f64() * 1e3;
        let peak_rss_bytes = rss.map(super::train::RssPeak::finish);
        let (score, cut, error) = match result {
            Ok(score) => (score.filter(|s| s.is_finite()), false, None),
            Err(TrainError::Cancelled) => (None, true, None),
            Err(e) => (None, false, Some(e.to_string())),
        };
        if !cut {
            let mut rates = self.rates.lock().unwrap_or_else(|e| e.into_inner());
            rates.push((job.family, wall_ms / job.n_samples.max(1) as f64));
            if job.n_samples >= self.n_train {
                let reserve = f64::from_bits(self.reserve_ms.load(Ordering::Relaxed));
                let reserve = reserve.max(FINAL_FACTOR * wall_ms);
                self.reserve_ms.store(reserve.to_bits(), Ordering::Relaxed);
            }
        }
        Trial {
            id,
            config: job.config,
            family: job.family,
            params: job.params.clone(),
            rung: job.rung,
            n_samples: train.len(),
            score,
            wall_ms,
            cut,
            error,
            peak_rss_bytes,
        }
    }
}

/// Trials as a table, best first (by `metric`; cut and failed trials last).
pub fn render_trials(trials: &[Trial], metric: &str) -> String {
    let metric: Metric = serde_json::from_value(serde_json::Value::String(metric.into()))
        .unwrap_or(Metric::Accuracy);
    let mut sorted: Vec<&Trial> = trials.iter().collect();
    sorted.sort_by(|a, b| rank(metric, a, b));
    let mut rows = vec![[
        "rank",
        "trial",
        "family",
        "rung",
        "samples",
        metric.name(),
        "wall ms",
        "peak MiB",
        "params",
    ]
    .map(String::from)
    .to_vec()];
    for (k, t) in sorted.iter().enumerate() {
        let score = match (t.score, t.cut, &t.error) {
            (Some(s), _, _) => format!("{s:.4}"),
            (None, true, _) => "cut".into(),
            (None, _, Some(_)) => "failed".into(),
            _ => "-".into(),
        };
        rows.push(vec![
            (k + 1).to_string(),
            t.id.to_string(),
            t.family.name().into(),
            t.rung.map_or("-".into(), |r| r.to_string()),
            t.n_samples.to_string(),
            score,
            format!("{:.1}", t.wall_ms),
            t.peak_rss_bytes
                .map_or("-".into(), |b| format!("{:.1}", b as f64 / 1048576.0)),
            t.params.to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|j| rows.iter().map(|r| r[j].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Parses a duration as seconds: `60`, `60s`, `1.5s`, `500ms`, `2m`.
///
/// # Errors
/// A message naming the value.
pub fn parse_budget(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let factor = match unit {
        "ms" => 1e-3,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("budget `{s}`: use e.g. 60s, 500ms or 2m")),
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v * factor),
        _ => Err(format!(
            "budget `{s}`: use a positive number, e.g. 60s, 500ms or 2m"
        )),
    }
}

/// What `edgeloop tune` produced.
#[derive(Debug, Clone)]
pub struct TuneReport {
    pub task: Task,
    pub rows: usize,
    pub trials: Vec<Trial>,
    pub card: ModelCard,
    pub onnx: Vec<u8>,
}

/// `edgeloop tune`: reads the labelled CSV of `opts` (rows in time order),
/// searches `opts.model.search` and trains the best configuration as
/// version 1; `progress` is told each finished trial. Writes the chosen
/// model to `opts.export` when given.
///
/// # Errors
/// A message naming the file or the training error.
pub fn tune_csv(
    opts: &super::offline::OfflineOptions,
    progress: &dyn Fn(&Trial),
) -> Result<TuneReport, String> {
    use super::offline;
    let csv = crate::ingest::csv_file::read_labelled_csv(&opts.file, &opts.label, &opts.features)?;
    let task = opts
        .task
        .unwrap_or_else(|| offline::guess_task(&csv.labels));
    let data = offline::dataset(&csv, task);
    if data.is_empty() {
        return Err(format!(
            "{}: no usable rows (regression needs numeric labels)",
            opts.file.display()
        ));
    }
    let settings = TrainSettings {
        pipeline: &opts.name,
        features: &csv.features,
        model: &opts.model,
        progress: None,
        // Each trial's and each candidate's own peak (the process's whole
        // run, `ru_maxrss`, was every one's).
        peak_rss: true,
    };
    let tuned = tune(
        &settings,
        &data,
        1,
        Trigger::Manual,
        None,
        &|| false,
        progress,
    )
    .map_err(|e| e.to_string())?;
    let chosen = tuned.training.chosen;
    let card = chosen.card;
    if let Some(path) = &opts.export {
        std::fs::write(path, &chosen.onnx)
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(TuneReport {
        task,
        rows: csv.len(),
        trials: tuned.trials,
        card,
        onnx: chosen.onnx,
    })
}

#[cfg(test)]
mod tests {
    #[cfg(target_os = "linux")]
    #[test]
    fn trial_threads_run_at_low_priority() {
        let nice = std::thread::spawn(|| {
            lower_priority();
            // SAFETY: getpriority reads its integer arguments only.
            unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
        })
        .join()
        .unwrap();
        assert!(nice >= TRIAL_NICE, "nice {nice}");
        // The calling thread keeps its own priority.
        let here = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        assert!(here < TRIAL_NICE, "nice {here}");
    }

    use super::*;

    #[test]
    fn halving_plan_follows_sklearn_factor_3() {
        // 9 configurations: 9 on n/9, 3 on n/3, 1 on n.
        assert_eq!(halving_plan(9, 900, 4), vec![(9, 100), (3, 300), (1, 900)]);
        // 20: 1 + ⌊log₃ 20⌋ = 3 rungs; ⌈20/3⌉ = 7, ⌈7/3⌉ = 3.
        assert_eq!(
            halving_plan(20, 900, 4),
            vec![(20, 100), (7, 300), (3, 900)]
        );
        // Too few samples for three rungs: two.
        assert_eq!(halving_plan(9, 30, 4), vec![(9, 10), (3, 30)]);
        assert_eq!(halving_plan(1, 30, 4), vec![(1, 30)]);
        assert!(halving_plan(0, 30, 4).is_empty());
    }

    #[test]
    fn sampling_stays_in_range_and_is_seeded() {
        let mut rng = fastrand::Rng::with_seed(7);
        for (_, range) in ["logistic", "mlp", "tree", "forest", "svm", "ridge"]
            .iter()
            .flat_map(|f| default_space(f.parse().unwrap()))
        {
            for _ in 0..200 {
                let v = range.sample(&mut rng);
                assert!(v >= range.low && v <= range.high, "{v} {range:?}");
                if matches!(range.scale, Scale::Int | Scale::LogInt) {
                    assert_eq!(v, v.round());
                }
            }
        }
        let draw = |seed| {
            let mut rng = fastrand::Rng::with_seed(seed);
            (0..5)
                .map(|_| default_space(Family::Svm)[0].1.sample(&mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }

    #[test]
    fn config_is_checked_naming_the_key() {
        let ok = SearchConfig::default();
        assert!(ok.validate().is_ok());
        let bad = |f: &dyn Fn(&mut SearchConfig)| {
            let mut c = SearchConfig::default();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(bad(&|c| c.max_trials = 0).starts_with("max_trials:"));
        assert!(bad(&|c| c.threads = 0).starts_with("threads:"));
        assert!(bad(&|c| c.budget_s = -1.0).starts_with("budget_s:"));
        fn range(fam: &'static str, p: &'static str, r: [f64; 2]) -> impl Fn(&mut SearchConfig) {
            move |c: &mut SearchConfig| {
                c.ranges.entry(fam.into()).or_default().insert(p.into(), r);
            }
        }
        assert!(bad(&range("mlp", "unitz", [1.0, 2.0])).starts_with("ranges.mlp.unitz:"));
        assert!(bad(&range("boost", "x", [1.0, 2.0])).starts_with("ranges.boost:"));
        assert!(bad(&range("svm", "c", [0.0, 2.0])).starts_with("ranges.svm.c:"));
        assert!(bad(&range("tree", "max_depth", [5.0, 2.0])).starts_with("ranges.tree.max_depth:"));
        assert!(bad(&range("forest", "max_features", [0.5, 1.5]))
            .starts_with("ranges.forest.max_features: 1.5"));
        let mut c = SearchConfig::default();
        range("mlp", "units", [4.0, 16.0])(&mut c);
        assert!(c.validate().is_ok());
        let units = c.space(Family::Mlp)[1].1;
        assert_eq!((units.low, units.high), (4.0, 16.0));
    }

    #[test]
    fn params_are_applied_to_the_family_section() {
        let base = ModelConfig::default();
        let c = apply(
            &base,
            Family::Mlp,
            &[("layers", 2.0), ("units", 24.0), ("l2", 0.5)],
        );
        assert_eq!(c.mlp.hidden_layers, vec![24, 24]);
        assert_eq!(params(&c, Family::Mlp)["l2"], 0.5);
        let c = apply(
            &base,
            Family::Forest,
            &[("max_features", 0.5), ("n_trees", 12.0)],
        );
        assert_eq!(c.family, Family::Forest);
        assert_eq!(params(&c, Family::Forest)["max_features"], 0.5);
        assert_eq!(c.forest.n_trees, 12);
    }

    #[test]
    fn budgets_parse() {
        assert_eq!(parse_budget("60s"), Ok(60.0));
        assert_eq!(parse_budget("2m"), Ok(120.0));
        assert_eq!(parse_budget("500ms"), Ok(0.5));
        assert_eq!(parse_budget("3"), Ok(3.0));
        assert!(parse_budget("-1s").is_err());
        assert!(parse_budget("1y").is_err());
    }
}
