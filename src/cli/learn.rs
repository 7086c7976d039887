//! `edgeloop train`, `tune`, `evaluate` (prequential) and `finetune`: the
//! offline learning commands, on labelled CSV files.

use std::path::PathBuf;

use crate::config::Config;

/// `edgeloop evaluate`.
#[derive(clap::Args)]
pub struct EvaluateArgs {
    /// Prequential (test-then-train) evaluation; the only mode for now.
    #[arg(long)]
    prequential: bool,
    /// Labelled CSV file with a header row, rows in time order.
    #[arg(long)]
    file: PathBuf,
    /// Label column (or the pipeline's label with --pipeline).
    #[arg(long, required_unless_present = "pipeline")]
    label: Option<String>,
    /// Feature columns, comma-separated (default: every other numeric column).
    #[arg(long, value_delimiter = ',')]
    features: Vec<String>,
    /// Take label, features and settings from this configured pipeline.
    ///
    /// Its label, features, trainer and detector settings, from the
    /// configuration (--config).
    #[arg(long)]
    pipeline: Option<String>,
    /// Configuration file of --pipeline, layered over the compiled-in default.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Model family: logistic, mlp, tree, forest, svm, or an online learner.
    ///
    /// The online learners, test then train on each row: online_logistic,
    /// hoeffding_tree, hoeffding_adaptive_tree or arf. Default: the
    /// pipeline's with --pipeline, else logistic.
    #[arg(long)]
    family: Option<String>,
    /// Task: classification or regression.
    ///
    /// Default: regression when every label is a number and there are more
    /// than 20 distinct ones. Regression replays an online regressor alone
    /// (--family hoeffding_tree, the default, or arf).
    #[arg(long)]
    task: Option<String>,
    /// Concept-drift detector: adwin, ddm or page_hinkley.
    #[arg(long, default_value = "adwin")]
    detector: String,
    /// Segments in the accuracy-over-time table.
    #[arg(long, default_value_t = 10)]
    segments: usize,
    /// Print the report's lines whole (default: cut at 100 columns).
    #[arg(long)]
    wide: bool,
    /// Seed of a randomised online learner (hoeffding_adaptive_tree, arf).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Online learners: earlier rows given as features beside each row.
    ///
    /// Beside the loop only online_logistic sees lags, deltas and rolling
    /// statistics (the trees see the readings and the last label); default
    /// there 2, alone (--family) 0.
    #[arg(long)]
    lags: Option<usize>,
    /// Online learners: each feature's change since the previous row.
    #[arg(long)]
    deltas: bool,
    /// Online learners: rolling mean and std of each feature over N rows.
    ///
    /// The current row included; 0: off.
    #[arg(long, default_value_t = 0)]
    rolling: usize,
    /// Online learners beside the loop, comma-separated, or off.
    ///
    /// online_logistic, hoeffding_tree, hoeffding_adaptive_tree, arf. Each
    /// predicts every row beside the loop, and the served column takes the
    /// prediction of whichever learner was right most often over the last
    /// 200 rows all predicted (2 points of hysteresis). Default: the
    /// pipeline's [pipelines.online] family with --pipeline, else the
    /// daemon's default.
    #[arg(long)]
    online: Option<String>,
    /// The previous row's label as one more learner of the choice.
    ///
    /// River's NoChangeClassifier; on by default, --no-change false leaves
    /// it out.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    no_change: Option<bool>,
    /// Online learners: the previous row's label, one-hot, as features.
    ///
    /// Known before the row is predicted, never the row's own; the file is
    /// one device's stream. On by default: --last-label false turns it off.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    last_label: Option<bool>,
    /// The loop's recent labelled rows kept for training (default 1000; 0: all).
    #[arg(long)]
    window: Option<usize>,
    /// The loop's older rows kept by reservoir sampling (default 1000).
    #[arg(long)]
    reservoir: Option<usize>,
    /// The loop trains after this many new labels (default 500; 0: never).
    #[arg(long)]
    retrain_every: Option<u64>,
    /// Labelled rows before the loop's first model (default 200).
    #[arg(long)]
    min_samples: Option<usize>,
    /// Write each row's predictions to this CSV.
    ///
    /// Columns row, label, each learner of the choice, served (empty: none).
    #[arg(long)]
    record: Option<PathBuf>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

/// `edgeloop finetune`.
#[derive(clap::Args)]
pub struct FinetuneArgs {
    /// The ONNX classifier whose last layer is refit.
    #[arg(long)]
    model: PathBuf,
    /// Labelled CSV, rows in time order; every other column is a feature.
    #[arg(long)]
    file: PathBuf,
    /// Label column of --file.
    #[arg(long)]
    label: String,
    /// Temporal holdout: the newest FRACTION of rows.
    #[arg(long, default_value_t = 0.2)]
    holdout: f64,
    /// Class names in output order, comma-separated.
    ///
    /// Default: the model's edgeloop metadata, else the labels sorted.
    #[arg(long, value_delimiter = ',')]
    classes: Vec<String>,
    /// L2 penalty on the head's weights, per sample.
    #[arg(long, default_value_t = 1e-3)]
    l2: f64,
    /// Where to write the fine-tuned model (only when promoted).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

/// `edgeloop train`.
#[derive(clap::Args)]
pub struct TrainArgs {
    #[command(flatten)]
    input: CsvInput,
    /// Temporal holdout: the newest FRACTION of rows (default 0.2).
    #[arg(long, conflicts_with = "folds")]
    holdout: Option<f64>,
    /// Print the model cards as JSON (the models endpoint's fields).
    #[arg(long)]
    json: bool,
    /// Print every card and cell whole (default: the table within 100 columns).
    #[arg(long)]
    wide: bool,
}

/// `edgeloop tune`.
#[derive(clap::Args)]
pub struct TuneArgs {
    #[command(flatten)]
    input: CsvInput,
    /// Wall-time budget of search and final training: 60s, 500ms, 2m.
    ///
    /// Default: the pipeline's `search.budget_s`, else 60 s.
    #[arg(long)]
    budget: Option<String>,
    /// random or successive_halving.
    #[arg(long)]
    strategy: Option<String>,
    /// Configurations tried, the configured settings included.
    #[arg(long)]
    max_trials: Option<usize>,
    /// Trials run in parallel.
    #[arg(long)]
    threads: Option<usize>,
    /// Seed of the search: the same seed and --max-trials give the same trials.
    #[arg(long)]
    seed: Option<u64>,
    /// Print `{"trials": [...], "card": {...}}`.
    #[arg(long)]
    json: bool,
    /// Print the tables whole (default: within 100 columns).
    #[arg(long)]
    wide: bool,
}

/// What `train` and `tune` read: a labelled CSV and the settings to train it
/// with.
#[derive(clap::Args)]
pub struct CsvInput {
    /// Labelled CSV file with a header row, rows in time order.
    #[arg(long)]
    file: PathBuf,
    /// Label column (or the pipeline's label with --pipeline).
    #[arg(long, required_unless_present = "pipeline")]
    label: Option<String>,
    /// Feature columns, comma-separated (default: every other numeric column).
    #[arg(long, value_delimiter = ',')]
    features: Vec<String>,
    /// Task: classification or regression.
    ///
    /// Default: regression when every label is a number and there are more
    /// than 20 distinct ones.
    #[arg(long)]
    task: Option<String>,
    /// Model family: logistic, linear, ridge, mlp, tree, forest, svm or auto.
    ///
    /// auto: every family that supports the task; the best serves. Default:
    /// the pipeline's with --pipeline, else auto.
    #[arg(long)]
    family: Option<String>,
    /// k-fold cross-validation over the training part, besides the holdout.
    ///
    /// Stratified for classification; candidates and trials are compared
    /// by it.
    #[arg(long)]
    folds: Option<usize>,
    /// Write the chosen model as ONNX.
    #[arg(long)]
    export: Option<PathBuf>,
    /// Take label, features, task and model settings from this pipeline.
    ///
    /// The pipeline as configured (--config).
    #[arg(long)]
    pipeline: Option<String>,
    /// Configuration file of --pipeline, layered over the compiled-in default.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Values that mean "missing", comma-separated (e.g. -200).
    ///
    /// As pandas' na_values; added to the pipeline's
    /// `[pipelines.preprocess] missing_values`. A regression label equal to
    /// one leaves its row out. Also applied inside the exported model.
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    missing_values: Vec<f64>,
    /// A feature's valid range, NAME=LOW,HIGH (repeatable).
    ///
    /// Readings outside are missing; added to `[pipelines.preprocess]
    /// ranges`.
    #[arg(long = "range", value_name = "NAME=LOW,HIGH")]
    ranges: Vec<String>,
    /// Missing values: mean, median, constant, last (or off).
    ///
    /// `[pipelines.preprocess] impute`, fitted on the training part only and
    /// part of the exported model, as every option below.
    #[arg(long)]
    impute: Option<String>,
    /// impute = constant's value.
    #[arg(long, allow_negative_numbers = true)]
    fill_value: Option<f64>,
    /// Add 0/1 columns of the features that had missing values.
    #[arg(long)]
    missing_indicator: bool,
    /// Outliers: clip_quantile, clip_iqr, drop (or off).
    #[arg(long)]
    outliers: Option<String>,
    /// Quantile levels of clip_quantile, LOW,HIGH (default 0.01,0.99).
    #[arg(long, value_delimiter = ',', num_args = 2, value_name = "LOW,HIGH")]
    quantiles: Vec<f64>,
    /// Tukey's k of clip_iqr and drop (default 1.5).
    #[arg(long)]
    iqr_factor: Option<f64>,
    /// Remove the features constant over the training part.
    #[arg(long)]
    drop_constant: bool,
    /// Scaling: standard, robust, minmax (or off).
    #[arg(long)]
    scale: Option<String>,
    /// Principal components: a count (3) or a variance fraction (0.95).
    #[arg(long)]
    pca: Option<f64>,
    /// Categorical columns (strings), one-hot encoded, comma-separated.
    #[arg(long, value_delimiter = ',')]
    categorical: Vec<String>,
    /// At most this many one-hot columns per categorical column.
    ///
    /// The least frequent categories share the last (0: no limit).
    #[arg(long)]
    max_categories: Option<usize>,
}

impl CsvInput {
    /// The settings of the configured pipeline (or the defaults) with this
    /// command line over them.
    fn settings(&self, default_name: &str) -> anyhow::Result<crate::learn::offline::CsvSettings> {
        let cfg = Config::load(self.config.as_deref())?;
        let args = crate::learn::offline::CsvArgs {
            pipeline: self.pipeline.clone(),
            label: self.label.clone(),
            features: self.features.clone(),
            task: self.task.clone(),
            family: self.family.clone(),
            folds: self.folds,
        };
        let pipeline = match &self.pipeline {
            Some(name) => {
                let p = cfg
                    .pipeline(name)
                    .ok_or_else(|| anyhow::anyhow!("no pipeline `{name}` in the configuration"))?;
                Some(crate::learn::offline::CsvSettings {
                    label: p.label.clone(),
                    features: p.features.clone(),
                    model: p.settings().model,
                    task: Some(p.task),
                    name: name.clone(),
                })
            }
            None => None,
        };
        let mut settings = crate::learn::offline::csv_settings(pipeline, args, default_name)
            .map_err(anyhow::Error::msg)?;
        let rules = &mut settings.model.preprocess;
        rules.missing_values.extend(&self.missing_values);
        for r in &self.ranges {
            let parsed = r.split_once('=').and_then(|(name, bounds)| {
                let (lo, hi) = bounds.split_once(',')?;
                Some((
                    name.to_string(),
                    [lo.trim().parse().ok()?, hi.trim().parse().ok()?],
                ))
            });
            let (name, range) =
                parsed.ok_or_else(|| anyhow::anyhow!("--range `{r}`: expected NAME=LOW,HIGH"))?;
            rules.ranges.insert(name, range);
        }
        fn choice<T: serde::de::DeserializeOwned>(flag: &str, v: &str) -> anyhow::Result<T> {
            serde_json::from_value(serde_json::Value::String(v.into()))
                .map_err(|e| anyhow::anyhow!("--{flag} `{v}`: {e}"))
        }
        if let Some(v) = &self.impute {
            rules.impute = choice("impute", v)?;
        }
        if let Some(v) = &self.outliers {
            rules.outliers = choice("outliers", v)?;
        }
        if let Some(v) = &self.scale {
            rules.scale = choice("scale", v)?;
        }
        if let Some(v) = self.fill_value {
            rules.fill_value = v;
        }
        if let [lo, hi] = self.quantiles[..] {
            rules.quantiles = [lo, hi];
        }
        if let Some(v) = self.iqr_factor {
            rules.iqr_factor = v;
        }
        if let Some(v) = self.pca {
            rules.pca = v;
        }
        for c in &self.categorical {
            if !rules.categorical.contains(c) {
                rules.categorical.push(c.clone());
            }
        }
        if let Some(v) = self.max_categories {
            rules.max_categories = v;
        }
        rules.missing_indicator |= self.missing_indicator;
        rules.drop_constant |= self.drop_constant;
        rules
            .validate(&settings.features)
            .or_else(|e| {
                // Features guessed from the file are not known yet: only
                // the ranges' names need them.
                if settings.features.is_empty()
                    && (e.starts_with("ranges:") || e.starts_with("categorical:"))
                {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(|e| anyhow::anyhow!("preprocess.{e}"))?;
        Ok(settings)
    }
}

/// Replays the labelled stream test-then-train through the continuous loop
/// and beside a frozen first model, with the online learner beside it (the
/// daemon's default unless --online off); prints the report.
pub fn evaluate(args: EvaluateArgs) -> anyhow::Result<()> {
    let EvaluateArgs {
        prequential,
        file,
        label,
        features,
        pipeline,
        config,
        family,
        task,
        detector,
        segments,
        seed,
        lags,
        deltas,
        rolling,
        last_label,
        online,
        no_change,
        window,
        reservoir,
        retrain_every,
        min_samples,
        record,
        json,
        wide,
    } = args;
    anyhow::ensure!(prequential, "only --prequential evaluation exists for now");
    let detector: crate::monitor::continual::DetectorKind =
        serde_json::from_value(serde_json::Value::String(detector.clone())).map_err(|_| {
            anyhow::anyhow!("detector `{detector}`: use adwin, ddm or page_hinkley")
        })?;
    let mut loop_config = crate::monitor::continual::ContinualConfig {
        detector,
        ..Default::default()
    };
    let mut online_cfg = crate::monitor::online::OnlineConfig {
        seed,
        family: crate::monitor::prequential::DEFAULT_ONLINE.into(),
        ..Default::default()
    };
    let (label, features) = match pipeline {
        Some(name) => {
            let cfg = Config::load(config.as_deref())?;
            let p = cfg
                .pipeline(&name)
                .ok_or_else(|| anyhow::anyhow!("no pipeline `{name}` in the configuration"))?;
            loop_config.detector = p.drift.detector;
            // The pipeline's training settings (holdout, warm
            // start, margins, reservoir_in_training), as the daemon's.
            loop_config.model = p.model.clone();
            loop_config.cooldown = p.drift.cooldown_labels;
            loop_config.retrain_on_drift = p.drift.retrain_on_drift;
            // The stream's settings, as the daemon's learner reads them
            // (`window = 0`: every labelled sample, not none).
            loop_config.window = match p.model.window {
                0 => usize::MAX,
                w => w,
            };
            loop_config.reservoir = p.model.reservoir;
            loop_config.min_samples = p.model.min_labels as usize;
            loop_config.retrain_every = p.model.retrain_every;
            online_cfg = p.online.clone();
            let features = if features.is_empty() {
                p.features.clone()
            } else {
                features
            };
            (label.unwrap_or_else(|| p.label.clone()), features)
        }
        None => (label.unwrap_or_default(), features),
    };
    if let Some(w) = window {
        loop_config.window = if w == 0 { usize::MAX } else { w };
    }
    if let Some(r) = reservoir {
        loop_config.reservoir = r;
    }
    if let Some(r) = retrain_every {
        loop_config.retrain_every = r;
    }
    if let Some(m) = min_samples {
        anyhow::ensure!(m >= 1, "--min-samples: at least 1");
        loop_config.min_samples = m;
    }
    let mut temporal = crate::features::temporal::TemporalConfig {
        lags: lags.unwrap_or(0),
        deltas,
        rolling,
        last_label: last_label.unwrap_or(crate::monitor::prequential::DEFAULT_LAST_LABEL),
        ..Default::default()
    };
    let online_family = family
        .as_deref()
        .and_then(|f| f.parse::<crate::learn::online::OnlineFamily>().ok());
    // The task, given or guessed from the labels (as `train` guesses it).
    let task = match task.as_deref() {
        Some("classification") => crate::learn::Task::Classification,
        Some("regression") => crate::learn::Task::Regression,
        Some(other) => anyhow::bail!("--task `{other}`: use classification or regression"),
        None => {
            // The reader's message names the file.
            let data = crate::ingest::csv_file::read_labelled_csv(&file, &label, &features)
                .map_err(anyhow::Error::msg)?;
            crate::learn::offline::guess_task(&data.labels)
        }
    };
    if task == crate::learn::Task::Regression {
        // An online regressor: every row predicted, then learned; no loop
        // (the loop classifies). Default: hoeffding_tree, the more accurate
        // of the two on Air Quality and FriedmanDrift (BENCHMARKS.md).
        let online = match (online_family, &family) {
            (Some(f), _) => f,
            (None, None) => crate::learn::online::OnlineFamily::HoeffdingTree,
            (None, Some(f)) => anyhow::bail!(
                "--family {f}: on a regression label the prequential replay runs an online \
                 regressor (hoeffding_tree or arf)"
            ),
        };
        let opts = crate::monitor::prequential_regression::RegressionOptions {
            file,
            label,
            features,
            family: online,
            segments,
            seed,
        };
        let report = crate::monitor::prequential_regression::run_online_regression(&opts)?;
        return print_report(
            &report,
            json,
            wide,
            crate::monitor::prequential_regression::render_online_regression,
        );
    }
    if let Some(online) = online_family {
        // An online learner: every row predicted, then learned; no loop.
        let opts = crate::monitor::prequential::OnlineOptions {
            file,
            label,
            features,
            family: online,
            segments,
            seed,
            temporal,
        };
        let report = crate::monitor::prequential::run_online(&opts)?;
        return print_report(
            &report,
            json,
            wide,
            crate::monitor::prequential::render_online,
        );
    }
    if let Some(f) = family {
        loop_config.model.family = f.parse().map_err(anyhow::Error::msg)?;
    }
    anyhow::ensure!(
        loop_config.model.family != crate::learn::Family::Auto
            && loop_config.model.family.supports(crate::learn::Task::Classification),
        "--family {}: the prequential loop trains one classification family (logistic, mlp, tree, forest, svm), or use an online learner (online_logistic, hoeffding_tree, hoeffding_adaptive_tree, arf)",
        loop_config.model.family
    );
    if let Some(f) = online {
        online_cfg.family = f;
    }
    let online = online_cfg
        .families()
        .map_err(|e| anyhow::anyhow!("--online: {e}"))?;
    temporal.lags = lags.unwrap_or(crate::monitor::prequential::DEFAULT_LAGS);
    let opts = crate::monitor::prequential::PrequentialOptions {
        file,
        label,
        features,
        loop_config,
        segments,
        online,
        no_change: no_change.unwrap_or(crate::monitor::prequential::DEFAULT_NO_CHANGE),
        seed: online_cfg.seed,
        temporal,
        record: record.is_some(),
    };
    let report = crate::monitor::prequential::run(&opts)?;
    if let Some(path) = record {
        let cell = |v: &Option<String>| v.clone().unwrap_or_default();
        let mut w = csv::Writer::from_path(&path)
            .map_err(|e| anyhow::anyhow!("--record {}: {e}", path.display()))?;
        let mut head = vec!["row".to_string(), "label".into()];
        head.extend(report.learners.iter().cloned());
        head.push("served".into());
        w.write_record(&head)?;
        for (i, r) in report.record.iter().enumerate() {
            let mut row = vec![i.to_string(), r.label.clone()];
            row.extend(r.learners.iter().map(cell));
            row.push(cell(&r.served));
            w.write_record(&row)?;
        }
        w.flush()
            .map_err(|e| anyhow::anyhow!("--record {}: {e}", path.display()))?;
    }
    if json {
        let mut v = serde_json::to_value(&report)?;
        if let Some(o) = v.as_object_mut() {
            o.remove("record");
        }
        outln!("{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        let text = crate::monitor::prequential::render(&report);
        out!("{}", super::render::fit(&text, wide))?;
    }
    Ok(())
}

/// Retrains the classifier's head; prints both accuracies and the decision.
pub fn finetune(args: FinetuneArgs) -> anyhow::Result<()> {
    let FinetuneArgs {
        model,
        file,
        label,
        holdout,
        classes,
        l2,
        out,
        json,
    } = args;
    use crate::learn::head;
    let args = head::FinetuneFile {
        model,
        file,
        label,
        classes,
        out: out.clone(),
        options: head::FinetuneOptions {
            holdout,
            l2,
            ..Default::default()
        },
    };
    let (report, written) = head::finetune_file(&args)?;
    if json {
        let mut v = serde_json::to_value(&report)?;
        v["written"] = serde_json::json!(written.then_some(out));
        outln!("{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        out!("{}", head::render(&report, out.as_deref(), written))?;
    }
    Ok(())
}

/// Trains from the CSV through the daemon's code path; prints the cards.
pub fn train(args: TrainArgs) -> anyhow::Result<()> {
    let TrainArgs {
        input,
        holdout,
        json,
        wide,
    } = args;
    let crate::learn::offline::CsvSettings {
        label,
        features,
        mut model,
        task,
        name,
    } = input.settings("train")?;
    let (file, export) = (input.file, input.export);
    if let Some(h) = holdout {
        model.holdout_fraction = h;
    }
    crate::config::validate_model(&model, task, "model.")?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let opts = crate::learn::offline::OfflineOptions {
        file,
        label,
        features,
        task,
        model,
        name,
        export: export.clone(),
    };
    let report = crate::learn::offline::train_csv(&opts, &|family, i, total| {
        bar.set_length(total as u64);
        bar.set_position(i as u64);
        bar.set_message(format!("training {family}"));
    })
    .map_err(anyhow::Error::msg)?;
    bar.finish_and_clear();
    let cards = crate::learn::offline::cards(&report);
    if json {
        outln!("{}", serde_json::to_string_pretty(cards)?)?;
    } else {
        let chosen = &report.training.chosen.card;
        out!(
            "{}",
            if wide {
                crate::learn::card::render_table(cards, None)
            } else {
                crate::learn::card::render_table_within(cards, None, super::render::WIDTH)
            }
        )?;
        outln!(
            "\n{} rows, {}; chosen: {} ({} {})",
            report.rows,
            report.task,
            chosen.family,
            chosen.metric,
            chosen
                .holdout_score
                .map_or("-".into(), |s| format!("{s:.4}"))
        )?;
        if let Some(path) = export {
            outln!("wrote {}", path.display())?;
        }
    }
    let chosen = &report.training.chosen.card;
    if let Some(b) = chosen.baseline.as_ref().filter(|b| {
        b.margin
            .is_some_and(|m| m < 0.0 || (m == 0.0 && b.score < 1.0))
    }) {
        let relation = if b.margin.is_some_and(|m| m < 0.0) {
            "worse than"
        } else {
            "no better than"
        };
        errln!(
            "warning: the chosen model ({} {}) is {relation} the {} baseline ({:.4}) on the \
             holdout; the daemon would not promote it",
            chosen.family,
            chosen
                .holdout_score
                .map_or("-".into(), |s| format!("{s:.4}")),
            b.kind,
            b.score
        );
    }
    Ok(())
}

/// Searches hyperparameters within the budget; prints the trials and the
/// chosen model's card.
pub fn tune(args: TuneArgs) -> anyhow::Result<()> {
    let TuneArgs {
        input,
        budget,
        strategy,
        max_trials,
        threads,
        seed,
        json,
        wide,
    } = args;
    use crate::learn::tune;
    let crate::learn::offline::CsvSettings {
        label,
        features,
        mut model,
        task,
        name,
    } = input.settings("tune")?;
    let (file, export) = (input.file, input.export);
    // A value given as a flag is named as that flag, as `edgeloop anomaly`
    // names its own.
    let flags = [
        ("budget_s:", budget.is_some(), "--budget:"),
        ("max_trials:", max_trials.is_some(), "--max-trials:"),
        ("threads:", threads.is_some(), "--threads:"),
    ];
    let search = &mut model.search;
    search.enabled = true;
    if let Some(b) = budget {
        search.budget_s = tune::parse_budget(&b).map_err(anyhow::Error::msg)?;
    }
    if let Some(s) = strategy {
        search.strategy = serde_json::from_value(serde_json::Value::String(s.clone()))
            .map_err(|_| anyhow::anyhow!("--strategy `{s}`: use random or successive_halving"))?;
    }
    search.max_trials = max_trials.unwrap_or(search.max_trials);
    search.threads = threads.unwrap_or(search.threads);
    search.seed = seed.unwrap_or(search.seed);
    if let Err(e) = search.validate() {
        if let Some((key, _, flag)) = flags
            .iter()
            .find(|(key, given, _)| *given && e.starts_with(key))
        {
            anyhow::bail!("{flag}{}", &e[key.len()..]);
        }
    }
    crate::config::validate_model(&model, task, "model.")?;
    let budget_s = model.search.budget_s;
    let bar = if json {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new((budget_s * 10.0).ceil() as u64)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {elapsed}/budget {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let started = std::time::Instant::now();
    let opts = crate::learn::offline::OfflineOptions {
        file,
        label,
        features,
        task,
        model,
        name,
        export: export.clone(),
    };
    let report = tune::tune_csv(&opts, &|trial| {
        bar.set_position((started.elapsed().as_secs_f64() * 10.0) as u64);
        bar.set_message(format!(
            "trial {} {}: {}",
            trial.id,
            trial.family,
            trial.score.map_or("-".into(), |s| format!("{s:.4}"))
        ));
    })
    .map_err(anyhow::Error::msg)?;
    bar.finish_and_clear();
    if json {
        let out = serde_json::json!({ "trials": report.trials, "card": report.card });
        outln!("{}", serde_json::to_string_pretty(&out)?)?;
    } else {
        let trials = tune::render_trials(&report.trials, &report.card.metric);
        let card = std::slice::from_ref(&report.card);
        if wide {
            out!("{trials}")?;
            outln!()?;
            out!("{}", crate::learn::card::render_table(card, None))?;
        } else {
            out!("{}", super::render::fit(&trials, false))?;
            outln!()?;
            out!(
                "{}",
                crate::learn::card::render_table_within(card, None, super::render::WIDTH)
            )?;
        }
        let best = report.card.search.as_ref().and_then(|s| s.best.as_ref());
        outln!(
            "\n{} rows, {}; chosen: trial {} {} ({} {})",
            report.rows,
            report.task,
            best.map_or("-".into(), |b| b.id.to_string()),
            report.card.family,
            report.card.metric,
            report
                .card
                .holdout_score
                .map_or("-".into(), |s| format!("{s:.4}"))
        )?;
        if let Some(path) = export {
            outln!("wrote {}", path.display())?;
        }
    }
    Ok(())
}

/// Prints an online replay's report: JSON with `--json`, else its text fitted
/// to the terminal (`--wide`: whole).
fn print_report<R: serde::Serialize>(
    report: &R,
    json: bool,
    wide: bool,
    render: impl Fn(&R) -> String,
) -> anyhow::Result<()> {
    if json {
        outln!("{}", serde_json::to_string_pretty(report)?)?;
    } else {
        out!("{}", super::render::fit(&render(report), wide))?;
    }
    Ok(())
}
