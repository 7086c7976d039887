//! The training path: one version from a dataset, through the steps
//! [`train_dataset`] lists (search, temporal holdout, each candidate family
//! fit and scored, ensemble, champion/challenger, refit, ONNX export, card).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::card::{self, ModelCard};
use super::forest::ForestModel;
use super::linear::{LinearConfig, LinearModel};
use super::logistic::{LogisticConfig, LogisticModel};
use super::mlp::MlpModel;
use super::model::{Family, Model, Task, TrainError};
use super::select::{self, Evaluation, Metric};
use super::svm::SvmModel;
use super::tree::TreeModel;
use super::{ensemble, metrics, now_ms, prepare, split, tune, Dataset};
use crate::ingest::decode::Sample;
use crate::learn::settings::{ModelConfig, PipelineSettings};

/// Why a training ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The pipeline reached `min_labels` labelled samples.
    MinLabels,
    /// `retrain_every` new labelled samples arrived.
    NewLabels,
    /// The concept-drift detector raised an alarm.
    Drift,
    /// New samples drifted from the training data (`retrain_on` "data").
    DataDrift,
    /// Anomaly alarms (`retrain_on` "anomaly").
    Anomaly,
    /// `schedule_s` elapsed with new labels.
    Schedule,
    /// Asked for over the API.
    Manual,
    /// A model a fleet member published, received with `[fleet] adopt`
    /// (`crate::serve::fleet`).
    Fleet,
}

impl Trigger {
    /// The name the card's JSON gives it (`min_labels`, `data_drift`, …),
    /// which the timeline's reasons and the comparison table use too.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MinLabels => "min_labels",
            Self::NewLabels => "new_labels",
            Self::Drift => "drift",
            Self::DataDrift => "data_drift",
            Self::Anomaly => "anomaly",
            Self::Schedule => "schedule",
            Self::Manual => "manual",
            Self::Fleet => "fleet",
        }
    }
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A trained version, ready to store and serve.
#[derive(Debug, Clone)]
pub struct TrainedVersion {
    pub model: Model,
    pub onnx: Vec<u8>,
    pub card: ModelCard,
}

/// What a training produced: the chosen version and, for `family = "auto"`,
/// the card of every candidate (the chosen one included), in candidate
/// order; one card otherwise.
#[derive(Debug, Clone)]
pub struct Training {
    pub chosen: TrainedVersion,
    pub candidates: Vec<ModelCard>,
}

/// Hands the memory a training freed back to the system: glibc's
/// `malloc_trim(0)` (elsewhere nothing). glibc keeps what a thread frees in
/// that thread's arena for its next allocations, and each training runs on
/// whichever blocking-pool thread is free, so the training copies of every
/// arena stayed resident: fed 300,000 readings (150,000 labelled, a
/// training every 2,000 labels), a daemon idled at 326-380 MB, 145-169 MB
/// with this (BENCHMARKS.md, "Training memory"). Call it once a training's
/// data is dropped, on a blocking thread (it walks every arena).
pub fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes an integer and works on the allocator's own
    // state, which it locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Trains `version` of `pipeline` on `samples`, guarded by `old_regimes`
/// when given (held out only, never trained on); see [`train_dataset`]. A
/// windowed pipeline (`[pipelines.windows]`) trains on the window samples of
/// `samples` ([`crate::features::windows::derive()`]: per device, in timestamp
/// order, each labelled by its last reading), its model features the window
/// statistics ([`PipelineSettings::model_features`]).
///
/// # Errors
/// As [`train_dataset`].
pub fn train_version(
    pipeline: &PipelineSettings,
    samples: &[Sample],
    old_regimes: Option<&[Sample]>,
    version: u32,
    trigger: Trigger,
    champion: Option<(u32, Champion<'_>)>,
    cancelled: impl Fn() -> bool,
) -> Result<TrainedVersion, TrainError> {
    let (features, data, old) = datasets(pipeline, samples, old_regimes);
    let settings = TrainSettings {
        pipeline: &pipeline.name,
        features: &features,
        model: &pipeline.model,
        progress: None,
        peak_rss: false,
    };
    train_dataset(
        &settings,
        &data,
        old.as_ref(),
        version,
        trigger,
        champion,
        &cancelled,
    )
    .map(|t| t.chosen)
}

/// The version serving when a training starts: what the challenger must beat
/// on the same holdout ([`card::judge`]).
#[derive(Clone, Copy)]
pub enum Champion<'a> {
    /// A version edgeloop trained: its parameters (warm start) and its
    /// predictions.
    Trained(&'a Model),
    /// A version without parameters edgeloop can read (an imported model,
    /// `serve::intake`): scored through the engine serving it, never a warm
    /// start.
    Served(&'a crate::onnx::engine::OnnxModel),
}

impl<'a> Champion<'a> {
    /// The parameters to warm-start from, for a version edgeloop trained.
    pub fn params(self) -> Option<&'a Model> {
        match self {
            Champion::Trained(m) => Some(m),
            Champion::Served(_) => None,
        }
    }

    /// The model as scoring sees it.
    pub fn predictor(self) -> &'a dyn select::Predictor {
        match self {
            Champion::Trained(m) => m,
            Champion::Served(m) => m,
        }
    }
}

impl<'a> From<&'a Model> for Champion<'a> {
    fn from(m: &'a Model) -> Self {
        Champion::Trained(m)
    }
}

/// What [`train_dataset`] needs of a pipeline's configuration.
#[derive(Clone, Copy)]
pub struct TrainSettings<'a> {
    pub pipeline: &'a str,
    pub features: &'a [String],
    pub model: &'a ModelConfig,
    /// Told each candidate family as its training starts.
    pub progress: Option<&'a dyn Fn(Family)>,
    /// Measure each candidate's peak resident memory into its card
    /// (`peak_rss_bytes`, see [`RssPeak`]): `edgeloop train`, whose process
    /// does nothing else. Off in the daemon.
    pub peak_rss: bool,
}

/// Trains one version on `data`, the one code path of the daemon, the
/// prequential evaluation and `edgeloop train`:
///
/// 0. with `[pipelines.model.search]` enabled, a hyperparameter search
///    ([`tune::tuned_config`]) picks the family and settings trained below;
/// 1. temporal holdout: the newest `holdout_fraction` of samples; with a
///    champion, every 10th older sample is held out too (the older regimes
///    a challenger must not forget). With `old_regimes` given, those samples
///    are the older slice instead and every older sample of `data` trains
///    (`model.reservoir_in_training = false`: fine-tune on recent data,
///    guarded by older data the challenger never trained on); the older
///    slice may hold classes `data` lacks, scored by name;
/// 2. each candidate family (`auto`: `candidates`, else the one family) is
///    fit on the rest (warm-started from the champion when it is of the
///    same family and `warm_start` is set), scored on the holdout and, with
///    `evaluation = "kfold"`, cross-validated over the training part; every
///    training part (this one, each training fold, the refit) is balanced
///    and augmented after the split when `balance`/`augment` ask for it
///    ([`prepare::fit_training`]), evaluation rows never; with `ensemble`
///    set, the best `ensemble_size` candidates also form an ensemble
///    ([`ensemble`]), scored on the same holdout as one more candidate;
/// 3. the best candidate by `metric` (the cross-validation mean with
///    k-fold, else the holdout score; the first on ties) is the challenger;
///    champion and challenger are compared on the same holdout
///    ([`card::judge`]: accuracy for classification, R² for regression);
/// 4. a promoted challenger (an ensemble: each member and the meta-model)
///    is refit on every sample of `data` with the same settings
///    (scikit-learn's `refit=True` practice: on a stream the newest samples
///    matter most) and exported to ONNX; its card's holdout metrics are
///    those of the evaluated fit.
///
/// # Errors
/// [`TrainError`] when the data is empty, a classification training set
/// lacks two classes, no candidate supports the task, or training was
/// cancelled.
pub fn train_dataset(
    settings: &TrainSettings<'_>,
    data: &Dataset,
    old_regimes: Option<&Dataset>,
    version: u32,
    trigger: Trigger,
    champion: Option<(u32, Champion<'_>)>,
    cancelled: &dyn Fn() -> bool,
) -> Result<Training, TrainError> {
    let started = Instant::now();
    let cpu_started = cpu_time_s();
    let task = data.task;
    // `[pipelines.preprocess]`: markers and out-of-range readings become
    // missing before anything is fitted or scored.
    let rules = &settings.model.preprocess.cleaning();
    let (cleaned, cleaning) = match clean_dataset(data, rules, settings.features) {
        Some((d, report)) => (Some(d), Some(report)),
        None => (None, None),
    };
    let data = cleaned.as_ref().unwrap_or(data);
    let cleaned_old = old_regimes.and_then(|o| clean_dataset(o, rules, settings.features));
    let old_regimes = cleaned_old.as_ref().map(|(d, _)| d).or(old_regimes);
    if data.len() < 2 {
        return Err(TrainError::Empty);
    }
    // `[pipelines.model.search]`: the best configuration found replaces the
    // configured settings.
    let searched = tune::tuned_config(settings, data, cancelled)?;
    let cfg = searched.as_ref().map_or(settings.model, |(c, _)| c);
    let metric = cfg.metric.unwrap_or(Metric::default_for(task));
    let (train, holdout, old_slice) =
        holdout_parts(data, cfg.holdout_fraction, old_regimes, champion.is_some());
    if task == Task::Classification {
        let mut seen = vec![false; data.classes.len()];
        train.y.iter().for_each(|&y| seen[y] = true);
        let present = seen.iter().filter(|&&s| s).count();
        if present < 2 {
            return Err(TrainError::TooFewClasses(present));
        }
    }
    let families = candidate_families(cfg, task)?;
    let mut evaluated: Vec<(Model, ModelCard, Option<f64>)> = Vec::new();
    for &family in &families {
        if let Some(progress) = settings.progress {
            progress(family);
        }
        let rss = settings.peak_rss.then(RssPeak::start).flatten();
        let t0 = Instant::now();
        let cpu0 = cpu_time_s();
        let init = champion
            .and_then(|(_, c)| c.params())
            .filter(|m| cfg.warm_start && m.family() == family);
        let (model, preparation) =
            prepare::fit_training(family, cfg, &train, settings.features, init, 0, cancelled)?;
        let cv = match cfg.evaluation {
            Evaluation::Holdout => None,
            Evaluation::Kfold => Some(cross_validate(
                family,
                cfg,
                &train,
                settings.features,
                metric,
                cancelled,
            )?),
        };
        let selection = match &cv {
            Some(cv) => Some(cv.mean),
            None => select::score(&model, &holdout, metric),
        };
        let mut card = describe(
            settings, &model, metric, &train, &holdout, data, version, trigger,
        );
        card.cv = cv;
        if let Some(p) = preparation {
            card.augmentation = Some(p.report);
            card.class_composition_before = p.before;
            card.class_composition_after = p.after;
        }
        card.training_ms = t0.elapsed().as_secs_f64() * 1e3;
        card.training_cpu_ms = cpu_time_s().zip(cpu0).map(|(a, b)| (a - b) * 1e3);
        card.peak_rss_bytes = rss.map(RssPeak::finish);
        evaluated.push((model, card, selection));
    }
    if let Some(kind) = cfg.ensemble.kind() {
        let rss = settings.peak_rss.then(RssPeak::start).flatten();
        let t0 = Instant::now();
        let ranked = evaluated.iter().map(|(m, _, sel)| (m, *sel));
        let members = ensemble::best_members(ranked, cfg.ensemble_size, |a, b| metric.better(a, b));
        let model = ensemble::candidate(kind, members, cfg, &train, settings.features, cancelled)?;
        let mut card = describe(
            settings, &model, metric, &train, &holdout, data, version, trigger,
        );
        card.training_ms = t0.elapsed().as_secs_f64() * 1e3;
        card.hyperparameters = hyperparameters(&model, cfg);
        card.peak_rss_bytes = rss.map(RssPeak::finish);
        evaluated.push((model, card.clone(), card.holdout_score));
    }
    let best = (0..evaluated.len())
        .reduce(|best, i| match (evaluated[i].2, evaluated[best].2) {
            (Some(a), Some(b)) if metric.better(a, b) => i,
            (Some(_), None) => i,
            _ => best,
        })
        .unwrap_or(0);
    let summaries: Vec<card::CandidateScore> = evaluated
        .iter()
        .map(|(m, c, sel)| card::CandidateScore {
            family: m.family().name().into(),
            metric: metric.name().into(),
            holdout: c.holdout_score,
            cv_mean: c.cv.as_ref().map(|cv| cv.mean),
            selected_by: *sel,
        })
        .collect();
    let mut cards: Vec<ModelCard> = evaluated.iter().map(|(_, c, _)| c.clone()).collect();
    let (challenger, mut chosen_card, _) = evaluated.swap_remove(best);
    let baseline = baseline(&train, &holdout);
    let decision = decide(
        cfg,
        trigger,
        champion,
        &challenger,
        &holdout,
        &old_slice,
        baseline.as_ref(),
    );
    // The chosen card's peak covers its refit on every sample and export too.
    let rss = settings.peak_rss.then(RssPeak::start).flatten();
    let model = if let (true, Model::Ensemble(e)) = (decision.promoted, &challenger) {
        Model::Ensemble(Box::new(e.refit(
            cfg,
            data,
            settings.features,
            cancelled,
        )?))
    } else if decision.promoted {
        let init = champion
            .and_then(|(_, c)| c.params())
            .filter(|m| cfg.warm_start && m.family() == challenger.family());
        prepare::fit_training(
            challenger.family(),
            cfg,
            data,
            settings.features,
            init,
            1,
            cancelled,
        )?
        .0
    } else {
        challenger
    };
    let onnx = rules.wrap_onnx(settings.features, model.to_onnx(version));
    if let Some(refit) = rss.map(RssPeak::finish) {
        chosen_card.peak_rss_bytes =
            Some(chosen_card.peak_rss_bytes.map_or(refit, |p| p.max(refit)));
    }
    chosen_card.baseline = baseline.map(|b| card::Baseline {
        margin: decision.challenger_recent.map(|c| c - b.score),
        ..b
    });
    chosen_card.decision = Some(decision);
    chosen_card.cleaning = cleaning;
    chosen_card.preprocessing = preprocessing(&model);
    chosen_card.n_samples = data.len() as u64;
    chosen_card.onnx_bytes = onnx.len() as u64;
    chosen_card.hyperparameters = hyperparameters(&model, cfg);
    chosen_card.search = searched.map(|(_, summary)| summary);
    if families.len() > 1 {
        chosen_card.candidates = summaries;
    }
    chosen_card.training_ms = started.elapsed().as_secs_f64() * 1e3;
    chosen_card.training_cpu_ms = cpu_time_s().zip(cpu_started).map(|(a, b)| (a - b) * 1e3);
    cards[best] = chosen_card.clone();
    Ok(Training {
        chosen: TrainedVersion {
            model,
            onnx,
            card: chosen_card,
        },
        candidates: cards,
    })
}

/// The features of `pipeline`'s model and the datasets of `samples` and
/// `old_regimes`: a windowed pipeline learns from the window samples of its
/// readings (per device, in timestamp order), not from the readings
/// themselves.
fn datasets(
    pipeline: &PipelineSettings,
    samples: &[Sample],
    old_regimes: Option<&[Sample]>,
) -> (Vec<String>, Dataset, Option<Dataset>) {
    let windowed = |s: &[Sample]| -> Vec<Sample> {
        if pipeline.windows.enabled {
            crate::features::windows::derive(s, &pipeline.windows, pipeline.features.len())
        } else {
            s.to_vec()
        }
    };
    let features = pipeline.model_features();
    let data = Dataset::from_samples(&windowed(samples), features.len(), pipeline.task);
    let old =
        old_regimes.map(|s| Dataset::from_samples(&windowed(s), features.len(), pipeline.task));
    (features, data, old)
}

/// (training part, recent holdout, older slice) of `data`: the newest
/// `fraction` is the holdout; the older slice is `old_regimes` when given,
/// else every 10th older sample when there is a champion to compare with,
/// else empty.
fn holdout_parts(
    data: &Dataset,
    fraction: f64,
    old_regimes: Option<&Dataset>,
    has_champion: bool,
) -> (Dataset, Dataset, Dataset) {
    let (older, holdout) = data.temporal_split(fraction);
    let (train, old_slice) = match (old_regimes, has_champion) {
        (Some(old), _) => (older, old.clone()),
        (None, true) => older.split_every(10),
        (None, false) => (
            older,
            Dataset::empty(data.task, data.classes.clone(), data.n_features),
        ),
    };
    (train, holdout, old_slice)
}

/// Judges a model made elsewhere (a fleet member's version,
/// `crate::serve::fleet`) as [`train_version`] judges its own challengers:
/// the same samples, the same temporal holdout (the newest
/// `holdout_fraction`), the same older slice (every 10th older sample, or
/// `old_regimes`), the same cleaning rules, the same champion/challenger rule
/// ([`card::judge`]) and the same trivial baseline. Nothing is fitted: the
/// challenger predicts as it is.
///
/// # Errors
/// [`TrainError::Empty`] with fewer than two samples.
pub fn judge_version(
    pipeline: &PipelineSettings,
    samples: &[Sample],
    old_regimes: Option<&[Sample]>,
    champion: Option<(u32, Champion<'_>)>,
    challenger: &dyn select::Predictor,
) -> Result<card::Decision, TrainError> {
    let (features, data, old) = datasets(pipeline, samples, old_regimes);
    let cfg = &pipeline.model;
    let rules = &cfg.preprocess.cleaning();
    let cleaned = clean_dataset(&data, rules, &features).map(|(d, _)| d);
    let data = cleaned.as_ref().unwrap_or(&data);
    let cleaned_old = old
        .as_ref()
        .and_then(|o| clean_dataset(o, rules, &features).map(|(d, _)| d));
    let old = cleaned_old.as_ref().or(old.as_ref());
    if data.len() < 2 {
        return Err(TrainError::Empty);
    }
    let (train, holdout, old_slice) =
        holdout_parts(data, cfg.holdout_fraction, old, champion.is_some());
    let baseline = baseline(&train, &holdout);
    Ok(decide(
        cfg,
        Trigger::Fleet,
        champion,
        challenger,
        &holdout,
        &old_slice,
        baseline.as_ref(),
    ))
}

/// `data` with `rules` applied ([`crate::learn::clean`]): readings that are
/// markers or out of range set missing, regression samples whose label is a
/// marker left out; `None` when there are no rules.
fn clean_dataset(
    data: &Dataset,
    rules: &crate::learn::clean::Cleaning,
    features: &[String],
) -> Option<(Dataset, card::CleaningReport)> {
    if rules.is_empty() {
        return None;
    }
    let mut d = data.clone();
    let readings = rules.apply(features, &mut d.x) as u64;
    let mut labels = 0;
    if d.task == Task::Regression {
        let keep: Vec<usize> = (0..d.len())
            .filter(|&i| !rules.label_missing(d.values[i]))
            .collect();
        labels = (d.len() - keep.len()) as u64;
        if labels > 0 {
            d = d.select(&keep);
        }
    }
    Some((
        d,
        card::CleaningReport {
            rules: rules.clone(),
            readings_missing: readings,
            labels_missing: labels,
        },
    ))
}

/// The fitted preprocessing steps of `model`, for its card.
fn preprocessing(model: &Model) -> Option<super::preprocess::Preprocessor> {
    match model {
        Model::Preprocessed(p) => Some(p.steps.clone()),
        _ => None,
    }
}

/// The families a training compares: `auto`'s candidates that support the
/// task (every such family when the list is empty), or the one family.
///
/// # Errors
/// [`TrainError::Unsupported`] when the family, or every candidate, cannot
/// learn `task`.
pub fn candidate_families(cfg: &ModelConfig, task: Task) -> Result<Vec<Family>, TrainError> {
    let families: Vec<Family> = match cfg.family {
        Family::Auto if cfg.candidates.is_empty() => Family::ALL
            .into_iter()
            .filter(|f| f.supports(task))
            .collect(),
        Family::Auto => cfg
            .candidates
            .iter()
            .copied()
            .filter(|f| f.supports(task) && !matches!(f, Family::Auto | Family::Ensemble))
            .collect(),
        f if f.supports(task) => vec![f],
        f => {
            return Err(TrainError::Unsupported {
                family: f.name(),
                task,
            })
        }
    };
    if families.is_empty() {
        return Err(TrainError::Unsupported {
            family: "auto",
            task,
        });
    }
    Ok(families)
}

/// Fits one family on `data` with the pipeline's settings for it.
///
/// # Errors
/// As the family's `fit`.
pub fn fit_model(
    family: Family,
    cfg: &ModelConfig,
    data: &Dataset,
    features: &[String],
    init: Option<&Model>,
    cancelled: &dyn Fn() -> bool,
) -> Result<Model, TrainError> {
    // `[pipelines.preprocess]`'s fitted steps: fitted on this part, the
    // family behind them.
    if let Some((steps, model)) =
        super::preprocess::fit_behind(cfg, data, features, init, |c, d, f, i| {
            fit_model(family, c, d, f, i, cancelled)
        })?
    {
        return Ok(Model::Preprocessed(Box::new(
            super::preprocess::PreprocessedModel { steps, model },
        )));
    }
    let target = data.target();
    let x = &data.x;
    Ok(match family {
        Family::Logistic => {
            let init = match init {
                Some(Model::Logistic(m)) => Some(m),
                _ => None,
            };
            Model::Logistic(LogisticModel::fit_target(
                x,
                &target,
                features,
                &logistic_config(cfg),
                init,
                cancelled,
            )?)
        }
        Family::Linear | Family::Ridge => {
            let linear = match family {
                Family::Linear => LinearConfig { alpha: 0.0 },
                _ => cfg.ridge.clone(),
            };
            Model::Linear(LinearModel::fit(
                x, &target, features, &linear, None, cancelled,
            )?)
        }
        Family::Svm => {
            let init = match init {
                Some(Model::Svm(m)) => Some(m),
                _ => None,
            };
            Model::Svm(SvmModel::fit(
                x, &target, features, &cfg.svm, init, cancelled,
            )?)
        }
        Family::Mlp => {
            let init = match init {
                Some(Model::Mlp(m)) => Some(m),
                _ => None,
            };
            Model::Mlp(MlpModel::fit(
                x, &target, features, &cfg.mlp, init, cancelled,
            )?)
        }
        // Trees are grown from scratch: `init` has nothing to continue.
        Family::Tree => Model::Tree(TreeModel::fit(
            x, &target, features, &cfg.tree, None, cancelled,
        )?),
        Family::Forest => Model::Forest(ForestModel::fit(
            x,
            &target,
            features,
            &cfg.forest,
            None,
            cancelled,
        )?),
        // Ensembles are built from fitted members (`ensemble::EnsembleModel`).
        Family::Auto | Family::Ensemble => {
            return Err(TrainError::Unsupported {
                family: family.name(),
                task: data.task,
            })
        }
    })
}

pub(crate) fn logistic_config(cfg: &ModelConfig) -> LogisticConfig {
    LogisticConfig {
        l2: cfg.l2,
        max_iter: cfg.max_iter,
        gtol: 1e-9,
    }
}

/// The model's settings and training outcome, for its card.
pub fn hyperparameters(model: &Model, cfg: &ModelConfig) -> serde_json::Value {
    match model {
        Model::Logistic(m) => m.hyperparameters(&logistic_config(cfg)),
        Model::Linear(m) => m.hyperparameters(),
        Model::Svm(m) => m.hyperparameters(),
        Model::Mlp(m) => m.hyperparameters(),
        Model::Tree(m) => m.hyperparameters(),
        Model::Forest(m) => m.hyperparameters(),
        Model::Ensemble(m) => m.hyperparameters(cfg),
        Model::Preprocessed(m) => hyperparameters(&m.model, cfg),
    }
}

/// `k`-fold cross-validation of `family` over `data` (stratified for
/// classification; folds in time order, no shuffle): each fold is scored by
/// `metric` after fitting on the other folds.
///
/// # Errors
/// As [`fit_model`]; [`TrainError::Empty`] when there are fewer samples
/// than folds.
pub fn cross_validate(
    family: Family,
    cfg: &ModelConfig,
    data: &Dataset,
    features: &[String],
    metric: Metric,
    cancelled: &dyn Fn() -> bool,
) -> Result<card::CrossValidation, TrainError> {
    let folds = match data.task {
        Task::Classification => split::stratified_kfold(&data.y, cfg.folds),
        Task::Regression => split::kfold(data.len(), cfg.folds),
    }
    .map_err(|e| match e {
        split::CvError::NoSamples => TrainError::Empty,
        // More folds than rows (or than a class's rows): say so, not
        // "training data is empty".
        e => TrainError::Settings(e.to_string()),
    })?;
    let mut scores = Vec::with_capacity(folds.len());
    for (fold, (train_idx, test_idx)) in folds.iter().enumerate() {
        let (train, test) = (data.select(train_idx), data.select(test_idx));
        let salt = 2 + fold as u64;
        let (model, _) =
            prepare::fit_training(family, cfg, &train, features, None, salt, cancelled)?;
        scores.push(select::score(&model, &test, metric).unwrap_or(f64::NAN));
    }
    Ok(card::CrossValidation::new(metric.name(), scores))
}

/// A candidate's card before the champion/challenger decision: metrics of
/// the fit on `train` scored on `holdout`.
#[allow(clippy::too_many_arguments)]
fn describe(
    settings: &TrainSettings<'_>,
    model: &Model,
    metric: Metric,
    train: &Dataset,
    holdout: &Dataset,
    data: &Dataset,
    version: u32,
    trigger: Trigger,
) -> ModelCard {
    let (holdout_metrics, holdout_regression) = match select::predictions(model, holdout) {
        _ if holdout.is_empty() => (None, None),
        None => (None, None),
        Some(select::Predictions::Classes(pred)) => {
            // A class the data lacks maps past the last class: count it as
            // its own (wrong) label.
            let mut names = holdout.classes.clone();
            names.push("(unknown)".into());
            let pred: Vec<usize> = pred.iter().map(|&p| p.min(holdout.classes.len())).collect();
            (
                metrics::classification_metrics(&holdout.y, &pred, &names).ok(),
                None,
            )
        }
        Some(select::Predictions::Values(pred)) => (
            None,
            metrics::regression_metrics(&holdout.values, &pred).ok(),
        ),
    };
    let holdout_probabilistic = (model.task() == Task::Classification && !holdout.is_empty())
        .then(|| {
            // Columns are the model's classes; the holdout's labels by name.
            let classes = model.classes();
            let y: Option<Vec<usize>> = holdout
                .y
                .iter()
                .map(|&k| classes.iter().position(|c| *c == holdout.classes[k]))
                .collect();
            metrics::probabilistic_metrics(&y?, &model.predict(&holdout.x), classes).ok()
        })
        .flatten();
    let onnx = model.to_onnx(version);
    let (p50_single, p50_batch) = inference_latency_us(&onnx, &holdout.x, data.n_features);
    ModelCard {
        pipeline: settings.pipeline.into(),
        version,
        family: model.family().name().into(),
        task: data.task,
        hyperparameters: serde_json::Value::Null,
        optimizer: serde_json::Value::Null,
        trigger,
        created_at_ms: now_ms(),
        features: model.feature_names().to_vec(),
        classes: model.classes().to_vec(),
        n_samples: train.len() as u64,
        n_train: train.len() as u64,
        n_holdout: holdout.len() as u64,
        class_composition_train: train.class_composition(),
        class_composition_holdout: holdout.class_composition(),
        class_composition_before: BTreeMap::new(),
        class_composition_after: BTreeMap::new(),
        augmentation: None,
        train_time_range_ms: time_range(&train.timestamps),
        holdout_time_range_ms: time_range(&holdout.timestamps),
        metric: metric.name().into(),
        holdout_score: select::score(model, holdout, metric),
        holdout: holdout_metrics,
        holdout_regression,
        holdout_probabilistic,
        cv: None,
        candidates: vec![],
        training_ms: 0.0,
        training_cpu_ms: None,
        onnx_bytes: onnx.len() as u64,
        predict_p50_us: p50_single,
        predict_batch_p50_us_per_row: p50_batch,
        peak_rss_bytes: None,
        live: None,
        last_seq: None,
        decision: None,
        search: None,
        imported: None,
        cleaning: None,
        baseline: None,
        preprocessing: preprocessing(model),
    }
}

/// Median latency through the serving engine (tract): one row, and per row
/// of a 64-row batch, microseconds; 25 runs each. `None` when the model does
/// not load (the registry refuses it later with the reason).
fn inference_latency_us(onnx: &[u8], x: &[f32], n_features: usize) -> (Option<f64>, Option<f64>) {
    let Ok(engine) = crate::onnx::engine::OnnxModel::load(onnx) else {
        return (None, None);
    };
    let n_rows = x.len() / n_features.max(1);
    if n_rows == 0 {
        return (None, None);
    }
    let batch: Vec<f32> = (0..64)
        .flat_map(|i| {
            x[(i % n_rows) * n_features..(i % n_rows + 1) * n_features]
                .iter()
                .copied()
        })
        .collect();
    let median = |input: &[f32]| {
        let mut t: Vec<f64> = (0..25)
            .map(|_| {
                let t0 = Instant::now();
                let _ = engine.predict_proba(input);
                t0.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    (
        Some(median(&batch[..n_features])),
        Some(median(&batch) / 64.0),
    )
}

/// The largest resident set size of this process while one candidate
/// trains, bytes ([`TrainSettings::peak_rss`]). The memory freed before it
/// is handed back first ([`return_freed_memory`]), so what an earlier
/// candidate freed is not counted again; then `/proc/self/statm`'s resident
/// pages are read every millisecond on a thread of its own until
/// [`RssPeak::finish`]. The peak is the process's: what it held before the
/// candidate (the data read, the models of the candidates before it, kept
/// for the comparison) plus what this candidate takes. `VmHWM`, the kernel's
/// exact peak, is the process's since it started (every candidate reported
/// the same one), and resetting it (`/proc/self/clear_refs`) also lowers
/// the `ru_maxrss` that `getrusage` and `wait4` report for the whole run
/// (what `edgeloop bench footprint` measures). A spike shorter than a
/// millisecond may be missed. Linux only (`None` elsewhere).
pub(crate) struct RssPeak {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    sampler: Option<std::thread::JoinHandle<()>>,
}

/// Resident bytes of this process now (`/proc/self/statm`).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

impl RssPeak {
    pub(crate) fn start() -> Option<Self> {
        return_freed_memory();
        let peak = Arc::new(AtomicU64::new(resident_bytes()?));
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = std::thread::Builder::new()
            .name("rss-peak".into())
            .spawn({
                let (stop, peak) = (stop.clone(), peak.clone());
                move || {
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(r) = resident_bytes() {
                            peak.fetch_max(r, Ordering::Relaxed);
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            })
            .ok()?;
        Some(Self {
            stop,
            peak,
            sampler: Some(sampler),
        })
    }

    /// Stops the sampling; the peak, bytes.
    pub(crate) fn finish(mut self) -> u64 {
        if let Some(r) = resident_bytes() {
            self.peak.fetch_max(r, Ordering::Relaxed);
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(s) = self.sampler.take() {
            let _ = s.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for RssPeak {
    fn drop(&mut self) {
        // A training that failed: the sampler ends within a millisecond.
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// CPU seconds this process has used (user + system), from `getrusage`.
fn cpu_time_s() -> Option<f64> {
    // SAFETY: getrusage writes into the struct we pass and reads nothing else.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        (libc::getrusage(libc::RUSAGE_SELF, &mut u) == 0).then_some(u)
    }?;
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    Some(tv(usage.ru_utime) + tv(usage.ru_stime))
}

/// Champion/challenger: both scored on the recent holdout and the older
/// slice (accuracy, or R² for regression); see `model.margin_recent` and
/// `model.margin_old`.
fn decide(
    cfg: &ModelConfig,
    trigger: Trigger,
    champion: Option<(u32, Champion<'_>)>,
    challenger: &dyn select::Predictor,
    recent: &Dataset,
    old: &Dataset,
    baseline: Option<&card::Baseline>,
) -> card::Decision {
    let mut d = decide_against_champion(cfg, trigger, champion, challenger, recent, old);
    // No model that does not beat a trivial baseline serves unless asked
    // for (then the reason says so, and `train` warns). A tie does not beat
    // it, except at the metric's best (1.0): a baseline already perfect on
    // the holdout cannot be beaten, and a model as perfect serves.
    if let (Some(b), Some(c)) = (baseline, d.challenger_recent) {
        if !card::beats(c, b.score, 0.0) && !(c >= 1.0 && b.score >= 1.0) {
            let relation = if c < b.score {
                "worse than"
            } else {
                "no better than"
            };
            let sign = if c < b.score { "<" } else { "=" };
            let worse = format!(
                "{relation} the {} baseline on the recent holdout ({c:.4} {sign} {:.4})",
                b.kind, b.score
            );
            if trigger == Trigger::Manual {
                d.reason = format!("{}; {worse}", d.reason);
            } else if d.promoted {
                d.promoted = false;
                d.reason = worse;
            }
        }
    }
    d
}

/// The trivial baselines of a holdout ([`card::Baseline`]); `None` when
/// either part is empty.
fn baseline(train: &Dataset, holdout: &Dataset) -> Option<card::Baseline> {
    if train.is_empty() || holdout.is_empty() {
        return None;
    }
    match train.task {
        Task::Classification => {
            let mut counts = vec![0usize; train.classes.len()];
            train.y.iter().for_each(|&y| counts[y] += 1);
            let majority =
                (0..counts.len()).fold(
                    0,
                    |best, i| {
                        if counts[i] > counts[best] {
                            i
                        } else {
                            best
                        }
                    },
                );
            let n = holdout.y.len() as f64;
            let score = holdout.y.iter().filter(|&&y| y == majority).count() as f64 / n;
            let mut prev = *train.y.last()?;
            let mut hits = 0usize;
            for &y in &holdout.y {
                hits += usize::from(y == prev);
                prev = y;
            }
            Some(card::Baseline {
                kind: "majority".into(),
                score,
                previous: Some(hits as f64 / n),
                margin: None,
            })
        }
        Task::Regression => {
            let mean = train.values.iter().sum::<f64>() / train.values.len() as f64;
            let r2 = |pred: &[f64]| {
                crate::learn::metrics::regression_metrics(&holdout.values, pred)
                    .ok()
                    .and_then(|m| m.r2)
            };
            let score = r2(&vec![mean; holdout.values.len()])?;
            let previous: Vec<f64> = std::iter::once(*train.values.last()?)
                .chain(holdout.values.iter().copied())
                .take(holdout.values.len())
                .collect();
            Some(card::Baseline {
                kind: "mean".into(),
                score,
                previous: r2(&previous),
                margin: None,
            })
        }
    }
}

/// Champion/challenger on the holdouts alone (see [`decide`]).
fn decide_against_champion(
    cfg: &ModelConfig,
    trigger: Trigger,
    champion: Option<(u32, Champion<'_>)>,
    challenger: &dyn select::Predictor,
    recent: &Dataset,
    old: &Dataset,
) -> card::Decision {
    let metric = match challenger.task() {
        Task::Classification => Metric::Accuracy,
        Task::Regression => Metric::R2,
    };
    let score = |m: &dyn select::Predictor, d: &Dataset| select::score(m, d, metric);
    let (challenger_recent, challenger_old) = (score(challenger, recent), score(challenger, old));
    let Some((champion_version, champ)) = champion else {
        return card::Decision {
            promoted: true,
            reason: "first model".into(),
            champion_version: None,
            champion_recent: None,
            challenger_recent,
            champion_old: None,
            challenger_old,
        };
    };
    let (champion_recent, champion_old) = (
        score(champ.predictor(), recent),
        score(champ.predictor(), old),
    );
    let (promoted, reason) = if trigger == Trigger::Manual {
        (true, "asked for over the API".to_string())
    } else if champion_recent.is_none() && challenger_recent.is_some() {
        // The engine serving an imported champion failed on the holdout.
        (
            true,
            format!("champion {champion_version} could not predict the holdout"),
        )
    } else {
        card::judge(
            champion_recent,
            challenger_recent,
            champion_old,
            challenger_old,
            cfg.margin_recent,
            cfg.margin_old,
        )
    };
    card::Decision {
        promoted,
        reason,
        champion_version: Some(champion_version),
        champion_recent,
        challenger_recent,
        champion_old,
        challenger_old,
    }
}

fn time_range(ts: &[i64]) -> Option<[i64; 2]> {
    Some([*ts.first()?, *ts.last()?])
}

#[cfg(test)]
mod tests {

    #[test]
    fn each_trigger_is_named_as_the_card_json_names_it() {
        use Trigger::*;
        for t in [
            MinLabels, NewLabels, Drift, DataDrift, Anomaly, Schedule, Manual, Fleet,
        ] {
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str(), "{t:?}");
            assert_eq!(t.to_string(), t.as_str());
        }
        assert_eq!(format!("trigger {}", MinLabels), "trigger min_labels");
    }

    use super::*;

    /// Two features; class `a` near (0, 0), `b` near (4, 0), `c` near (0, 4).
    fn blobs(classes: &[&str], n: usize, t0: i64) -> Vec<Sample> {
        (0..n)
            .map(|i| {
                let label = classes[i % classes.len()];
                let (cx, cy) = match label {
                    "a" => (0.0, 0.0),
                    "b" => (4.0, 0.0),
                    _ => (0.0, 4.0),
                };
                let jitter = |k: usize| ((i * 7919 + k * 104_729) % 100) as f32 / 100.0 - 0.5;
                Sample {
                    timestamp_ms: t0 + i as i64,
                    device: String::new(),
                    features: vec![cx + jitter(1), cy + jitter(2)],
                    label: Some(label.into()),
                }
            })
            .collect()
    }

    #[test]
    fn an_older_regime_set_refuses_a_challenger_that_forgot_a_class() {
        let features = vec!["x".to_string(), "y".to_string()];
        let model = ModelConfig::default();
        let settings = TrainSettings {
            pipeline: "p",
            features: &features,
            model: &model,
            progress: None,
            peak_rss: false,
        };
        let task = Task::Classification;
        let old = Dataset::from_samples(&blobs(&["a", "b", "c"], 300, 0), 2, task);
        let champion = fit_model(Family::Logistic, &model, &old, &features, None, &|| false)
            .expect("champion");
        // Recent data lacks `c`: the challenger, trained on it alone, forgets `c`.
        let recent = Dataset::from_samples(&blobs(&["a", "b"], 400, 1000), 2, task);
        let guarded = train_dataset(
            &settings,
            &recent,
            Some(&old),
            2,
            Trigger::Drift,
            Some((1, Champion::Trained(&champion))),
            &|| false,
        )
        .expect("training");
        let d = guarded.chosen.card.decision.expect("decision");
        assert!(!d.promoted, "{d:?}");
        // Both perfect on the recent holdout (a tie keeps the champion too).
        assert!(
            d.reason.contains("older regimes: challenger"),
            "{}",
            d.reason
        );
        assert_eq!(d.champion_old, Some(1.0));
        assert!(d.challenger_old.is_some_and(|c| c < 0.7), "{d:?}");
        // Every older sample of `data` trained: only the newest 20 % held out.
        assert_eq!(guarded.chosen.card.n_train, 320);
        assert_eq!(guarded.chosen.card.n_holdout, 80);
        let unguarded = train_dataset(
            &settings,
            &recent,
            None,
            2,
            Trigger::Drift,
            Some((1, Champion::Trained(&champion))),
            &|| false,
        )
        .expect("training");
        // Without it, the older slice is every 10th older sample of the same
        // recent data: the challenger keeps it, and is judged on the recent
        // holdout alone, where both are perfect, a tie that keeps the
        // champion.
        let d = unguarded.chosen.card.decision.expect("decision");
        assert_eq!((d.champion_old, d.challenger_old), (Some(1.0), Some(1.0)));
        assert_eq!(
            (d.champion_recent, d.challenger_recent),
            (Some(1.0), Some(1.0))
        );
        assert!(!d.promoted, "{d:?}");
        assert_eq!(
            d.reason,
            "recent holdout: challenger 1.0000 does not beat champion 1.0000"
        );
        assert_eq!(unguarded.chosen.card.n_train, 288);
    }

    /// 500 samples in time order: in the first 400 a positive `x` means
    /// `b`; in the newest 100 (the holdout) every sample is `a`, a fifth of
    /// them with a positive `x`.
    fn regime_flip() -> Vec<Sample> {
        (0..500)
            .map(|i| {
                let positive = i % 5 == 0;
                let x = if positive {
                    1.0 + (i % 7) as f32 / 10.0
                } else {
                    -1.0 - (i % 3) as f32 / 10.0
                };
                let label = if positive && i < 400 { "b" } else { "a" };
                Sample {
                    timestamp_ms: i as i64,
                    device: String::new(),
                    features: vec![x],
                    label: Some(label.into()),
                }
            })
            .collect()
    }

    #[test]
    fn a_model_worse_than_the_majority_baseline_serves_only_when_asked_for() {
        let features = vec!["x".to_string()];
        let model = ModelConfig::default();
        let settings = TrainSettings {
            pipeline: "p",
            features: &features,
            model: &model,
            progress: None,
            peak_rss: false,
        };
        let data = Dataset::from_samples(&regime_flip(), 1, Task::Classification);
        for trigger in [Trigger::Drift, Trigger::Manual] {
            let t = train_dataset(&settings, &data, None, 1, trigger, None, &|| false)
                .expect("training");
            let card = &t.chosen.card;
            let b = card.baseline.as_ref().expect("baseline");
            // The holdout is all `a`: DummyClassifier("most_frequent")
            // fitted on the first 400 (320 `a`, 80 `b`) scores 1.0, and so
            // does the previous label (the last training label, row 399,
            // is `a` too).
            assert_eq!(
                (b.kind.as_str(), b.score, b.previous),
                ("majority", 1.0, Some(1.0))
            );
            // The model learned x > 0 -> b: it misses the 20 positive rows.
            assert_eq!(card.holdout_score, Some(0.8));
            assert_eq!(b.margin, Some(0.8 - 1.0));
            let d = card.decision.as_ref().expect("decision");
            match trigger {
                Trigger::Manual => {
                    assert!(d.promoted, "{d:?}");
                    assert!(d.reason.ends_with("worse than the majority baseline on the recent holdout (0.8000 < 1.0000)"), "{}", d.reason);
                }
                _ => {
                    assert!(!d.promoted, "{d:?}");
                    assert_eq!(
                        d.reason,
                        "worse than the majority baseline on the recent holdout (0.8000 < 1.0000)"
                    );
                }
            }
        }
    }

    /// 500 samples of one feature `x` in (−1, 1), never 0, in time order: `b`
    /// when `x > 0`, except every 10th sample (`i % 10 == 3`), whose label
    /// is flipped.
    fn noisy_threshold(shift: f32) -> Vec<Sample> {
        (0..500)
            .map(|i| {
                let x = ((i * 37) % 100) as f32 / 50.0 - 0.99;
                let label = if (x > 0.0) != (i % 10 == 3) { "b" } else { "a" };
                Sample {
                    timestamp_ms: i as i64,
                    device: String::new(),
                    features: vec![x + shift],
                    label: Some(label.into()),
                }
            })
            .collect()
    }

    #[test]
    fn a_challenger_equal_to_the_champion_is_not_promoted_one_just_better_is() {
        let features = vec!["x".to_string()];
        let model = ModelConfig::default();
        assert_eq!(model.margin_recent, 0.0);
        let settings = TrainSettings {
            pipeline: "p",
            features: &features,
            model: &model,
            progress: None,
            peak_rss: false,
        };
        let task = Task::Classification;
        let data = Dataset::from_samples(&noisy_threshold(0.0), 1, task);
        // A challenger trained on `data` against a champion of the same
        // family, settings and seed fit on the oldest 80 % of `champion_data`:
        // the challenger's card.
        let against = |champion_data: &Dataset| {
            let champion = fit_model(
                Family::Logistic,
                &model,
                &champion_data.slice(0..400),
                &features,
                None,
                &|| false,
            )
            .expect("champion");
            train_dataset(
                &settings,
                &data,
                None,
                2,
                Trigger::NewLabels,
                Some((1, Champion::Trained(&champion))),
                &|| false,
            )
            .expect("training")
            .chosen
            .card
        };
        // The champion on the same training part the challenger is fit on.
        let card = against(&data);
        let d = card.decision.expect("decision");
        let b = card.baseline.expect("baseline");
        // Equal scores, below perfect and above the majority baseline: only
        // the tie keeps the champion.
        let score = d.challenger_recent.expect("challenger score");
        assert_eq!(d.champion_recent, Some(score), "{d:?}");
        assert!(score < 1.0 && score > b.score, "{d:?} {b:?}");
        assert!(!d.promoted, "{d:?}");
        assert_eq!(
            d.reason,
            format!("recent holdout: challenger {score:.4} does not beat champion {score:.4}")
        );

        // A champion trained where every `x` read 0.1 higher learned `b`
        // above 0.1: it calls `a` the holdout's `x` in (0, 0.1), which the
        // challenger gets right (bar the flipped ones).
        let shifted = Dataset::from_samples(&noisy_threshold(0.1), 1, task);
        let d = against(&shifted).decision.expect("decision");
        let (h, c) = (
            d.champion_recent.expect("h"),
            d.challenger_recent.expect("c"),
        );
        // Better by a few holdout samples (of 100), not by a wide margin.
        assert!(c > h && c - h <= 0.1, "{d:?}");
        assert!(d.promoted, "{d:?}");
    }

    #[test]
    fn a_model_only_as_good_as_the_majority_baseline_is_not_promoted() {
        // `x` is the same for each run of 10 consecutive samples, 7 `a` and
        // 3 `b` in each: it says nothing of the label, so the model predicts
        // the majority `a`, as DummyClassifier("most_frequent") does: both
        // score 70/100 on the holdout (samples 400..500).
        let samples: Vec<Sample> = (0..500)
            .map(|i| Sample {
                timestamp_ms: i as i64,
                device: String::new(),
                features: vec![((i / 10) % 20) as f32 / 10.0 - 0.95],
                label: Some(if i % 10 < 7 { "a" } else { "b" }.into()),
            })
            .collect();
        let features = vec!["x".to_string()];
        let model = ModelConfig::default();
        let settings = TrainSettings {
            pipeline: "p",
            features: &features,
            model: &model,
            progress: None,
            peak_rss: false,
        };
        let data = Dataset::from_samples(&samples, 1, Task::Classification);
        for trigger in [Trigger::MinLabels, Trigger::Manual] {
            let t = train_dataset(&settings, &data, None, 1, trigger, None, &|| false)
                .expect("training");
            let card = &t.chosen.card;
            let b = card.baseline.as_ref().expect("baseline");
            assert_eq!((b.kind.as_str(), b.score), ("majority", 0.7));
            assert_eq!(card.holdout_score, Some(0.7));
            let d = card.decision.as_ref().expect("decision");
            let why =
                "no better than the majority baseline on the recent holdout (0.7000 = 0.7000)";
            match trigger {
                Trigger::Manual => {
                    assert!(d.promoted, "{d:?}");
                    assert!(d.reason.ends_with(why), "{}", d.reason);
                }
                _ => {
                    assert!(!d.promoted, "{d:?}");
                    assert_eq!(d.reason, why);
                }
            }
        }
    }
}
