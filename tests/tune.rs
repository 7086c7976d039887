//! Hyperparameter search (`learn::tune`) on the shared reference datasets:
//! never worse than the configured settings, within its budget,
//! reproducible, successive halving's rungs, config validation, the daemon's
//! hook and `edgeloop tune --json`.

#[path = "common/datasets.rs"]
mod datasets;

use std::time::Instant;

use edgeloop::config::{Config, ModelConfig};
use edgeloop::learn::tune::{self, SearchConfig, Strategy, Trial};
use edgeloop::learn::{self, Dataset, Family, Task, Trigger};

use datasets::{settings, stream as dataset, train};

fn model(family: Family, search: SearchConfig) -> ModelConfig {
    ModelConfig {
        family,
        search: SearchConfig {
            enabled: true,
            ..search
        },
        ..ModelConfig::default()
    }
}

fn tune(data: &Dataset, features: &[String], model: &ModelConfig) -> tune::Tuned {
    tune::tune(
        &settings(features, model),
        data,
        1,
        Trigger::Manual,
        None,
        &|| false,
        &|_| {},
    )
    .unwrap()
}

/// Held by every test of this file: the budget test measures wall time and
/// must not share its cores with the others.
static TIMED: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn timed() -> std::sync::MutexGuard<'static, ()> {
    TIMED.lock().unwrap_or_else(|e| e.into_inner())
}

/// A trial without its wall time (which differs from run to run).
fn timeless(t: &Trial) -> Trial {
    Trial {
        wall_ms: 0.0,
        ..t.clone()
    }
}

#[test]
fn the_tuned_model_scores_at_least_the_default_on_the_holdout() {
    // By construction: trial 0 is the configured (default) settings, scored
    // on the same temporal holdout as `train_dataset`, and the first of equal
    // scores wins; so the best trial is never below it, and training it
    // through `train_dataset` reproduces its score on the card.
    let _timed = timed();
    for (name, family) in [
        ("occupancy", Family::Tree),
        ("gas12", Family::Logistic),
        ("basic_motions", Family::Mlp),
    ] {
        let (data, features) = dataset(name, Task::Classification);
        let default_model = ModelConfig {
            family,
            ..ModelConfig::default()
        };
        let default = train(&data, &features, &default_model);
        let default_score = default.chosen.card.holdout_score.unwrap();
        let m = model(
            family,
            SearchConfig {
                max_trials: 8,
                budget_s: 600.0,
                seed: 1,
                ..SearchConfig::default()
            },
        );
        let t0 = Instant::now();
        let tuned = tune(&data, &features, &m);
        let card = &tuned.training.chosen.card;
        let tuned_score = card.holdout_score.unwrap();
        let search = card.search.as_ref().unwrap();
        eprintln!(
            "{name} {family}: default {default_score:.4}, tuned {tuned_score:.4} (gain {:+.4}), \
             best trial {:?}, {} trials in {:.0} ms (tune total {:.0} ms)",
            tuned_score - default_score,
            search.best.as_ref().map(|b| (b.id, b.params.to_string())),
            search.trials,
            search.elapsed_ms,
            t0.elapsed().as_secs_f64() * 1e3,
        );
        assert_eq!(tuned.trials.len(), 8);
        assert_eq!(
            tuned.trials[0].score,
            Some(default_score),
            "trial 0 is the default"
        );
        assert_eq!(search.default_score, Some(default_score));
        assert_eq!(card.holdout_score, search.best.as_ref().unwrap().score);
        assert!(
            tuned_score >= default_score,
            "{name}: {tuned_score} < {default_score}"
        );
        assert_eq!(card.family, family.name());
    }
}

#[test]
fn the_search_keeps_its_wall_time_budget() {
    // Budget compliance, not a speed claim: search and final training
    // together end within 10 % of the budget, trials cut or left unstarted.
    let _timed = timed();
    let (data, features) = dataset("gas12", Task::Classification);
    for (strategy, threads) in [(Strategy::Random, 2), (Strategy::SuccessiveHalving, 1)] {
        let m = model(
            Family::Auto,
            SearchConfig {
                strategy,
                threads,
                max_trials: 500,
                budget_s: 3.0,
                ..SearchConfig::default()
            },
        );
        let t0 = Instant::now();
        let tuned = tune(&data, &features, &m);
        let elapsed = t0.elapsed().as_secs_f64();
        let search = tuned.training.chosen.card.search.clone().unwrap();
        eprintln!(
            "{strategy:?} threads {threads}: elapsed {elapsed:.2} s of 3 s; search {:.0} ms, \
             {} trials ({} cut), final training {:.0} ms",
            search.elapsed_ms, search.trials, search.cut, tuned.training.chosen.card.training_ms
        );
        // The budget bounds the search (README: the best configuration is
        // then trained through the same path, after it): its own wall time,
        // not the final training, which a loaded machine stretches.
        assert!(
            search.elapsed_ms <= 1.1 * 3000.0,
            "{strategy:?}: search {:.0} ms",
            search.elapsed_ms
        );
        assert!(tuned.trials.len() < 500 + 5, "the budget ended the search");
        assert!(search.best.is_some());
    }
}

#[test]
fn the_same_seed_and_max_trials_give_the_same_trials_and_model() {
    let _timed = timed();
    let (data, features) = dataset("basic_motions", Task::Classification);
    let search = |seed| SearchConfig {
        max_trials: 10,
        threads: 2,
        seed,
        budget_s: 600.0,
        ..SearchConfig::default()
    };
    let (a, b) = (
        tune(&data, &features, &model(Family::Auto, search(7))),
        tune(&data, &features, &model(Family::Auto, search(7))),
    );
    let trials = |t: &tune::Tuned| t.trials.iter().map(timeless).collect::<Vec<_>>();
    assert_eq!(trials(&a), trials(&b));
    assert_eq!(a.training.chosen.onnx, b.training.chosen.onnx);
    let families: std::collections::BTreeSet<Family> = a.trials.iter().map(|t| t.family).collect();
    assert!(families.len() > 1, "auto searches several families");
    // Nor does the thread count change them.
    let one_thread = SearchConfig {
        threads: 1,
        ..search(7)
    };
    let d = tune(&data, &features, &model(Family::Auto, one_thread));
    assert_eq!(trials(&a), trials(&d));
    assert_eq!(a.training.chosen.onnx, d.training.chosen.onnx);
    let c = tune(&data, &features, &model(Family::Auto, search(8)));
    assert_ne!(trials(&a), trials(&c), "another seed draws other trials");
    // The first trials are each candidate family's configured settings.
    let first: Vec<&str> = a.trials[..5].iter().map(|t| t.family.name()).collect();
    assert_eq!(first, ["logistic", "mlp", "tree", "forest", "svm"]);
}

#[test]
fn successive_halving_runs_many_configurations_small_and_few_in_full() {
    let _timed = timed();
    let (data, features) = dataset("occupancy", Task::Classification);
    let m = model(
        Family::Logistic,
        SearchConfig {
            strategy: Strategy::SuccessiveHalving,
            max_trials: 10,
            budget_s: 600.0,
            seed: 3,
            ..SearchConfig::default()
        },
    );
    let n_train = data.temporal_split(m.holdout_fraction).0.len();
    let tuned = tune(&data, &features, &m);
    // Trial 0: the configured settings on every training sample; then 9
    // drawn configurations: 9 on n/9 samples, the best 3 on n/3, 1 on n.
    assert_eq!(tuned.trials[0].rung, None);
    assert_eq!(tuned.trials[0].n_samples, n_train);
    let rung = |k| {
        let t: Vec<&Trial> = tuned.trials.iter().filter(|t| t.rung == Some(k)).collect();
        (t.len(), t.first().map(|t| t.n_samples))
    };
    let sizes = [rung(0), rung(1), rung(2)];
    eprintln!("n_train {n_train}; rungs (configurations, samples): {sizes:?}");
    assert_eq!(
        sizes,
        [
            (9, Some(n_train / 9)),
            (3, Some(n_train / 3)),
            (1, Some(n_train))
        ]
    );
    assert_eq!(tuned.trials.len(), 1 + 9 + 3 + 1);
    // Those promoted were the best of their rung.
    let r0: Vec<&Trial> = tuned.trials.iter().filter(|t| t.rung == Some(0)).collect();
    let r1: Vec<usize> = tuned
        .trials
        .iter()
        .filter(|t| t.rung == Some(1))
        .map(|t| t.config)
        .collect();
    let worst_promoted = r0
        .iter()
        .filter(|t| r1.contains(&t.config))
        .map(|t| t.score.unwrap())
        .fold(f64::MAX, f64::min);
    let best_dropped = r0
        .iter()
        .filter(|t| !r1.contains(&t.config))
        .map(|t| t.score.unwrap_or(f64::MIN))
        .fold(f64::MIN, f64::max);
    assert!(worst_promoted >= best_dropped);
}

#[test]
fn a_bad_search_config_is_refused_naming_the_key() {
    let _timed = timed();
    let dir = tempfile::tempdir().unwrap();
    let pipeline = "[[pipelines]]\nname='p'\ntopics=['a/#']\nfeatures=['f']\nlabel='y'\n";
    for (section, expected) in [
        (
            "[pipelines.model.search]\nmax_trials = 0\n",
            "config key `pipelines[0].model.search.max_trials`: must be at least 1",
        ),
        (
            "[pipelines.model.search]\nbudget_s = 0\n",
            "config key `pipelines[0].model.search.budget_s`",
        ),
        (
            "[pipelines.model.search]\nthreads = 0\n",
            "config key `pipelines[0].model.search.threads`",
        ),
        (
            "[pipelines.model.search.ranges]\nmlp = { unitz = [8, 64] }\n",
            "config key `pipelines[0].model.search.ranges.mlp.unitz`",
        ),
        (
            "[pipelines.model.search.ranges]\nsvm = { c = [0, 10] }\n",
            "config key `pipelines[0].model.search.ranges.svm.c`: a log-scale range needs low > 0",
        ),
        (
            "[pipelines.model.search.ranges]\ntree = { max_depth = [8, 2] }\n",
            "config key `pipelines[0].model.search.ranges.tree.max_depth`",
        ),
    ] {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, format!("{pipeline}{section}")).unwrap();
        let err = Config::load_with_env(Some(&path), std::iter::empty())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with(expected), "{section}: {err}");
    }
    for (section, word) in [
        ("[pipelines.model.search]\nstrategy = 'grid'\n", "grid"),
        ("[pipelines.model.search]\nbudget = 3\n", "budget"),
    ] {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, format!("{pipeline}{section}")).unwrap();
        let err = Config::load_with_env(Some(&path), std::iter::empty())
            .unwrap_err()
            .to_string();
        assert!(err.contains(word), "{section}: {err}");
    }
    // A good section loads, ranges included.
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!(
            "{pipeline}[pipelines.model.search]\nenabled = true\nstrategy = 'successive_halving'\n\
             [pipelines.model.search.ranges]\nmlp = {{ units = [8, 64] }}\n"
        ),
    )
    .unwrap();
    let cfg = Config::load_with_env(Some(&path), std::iter::empty()).unwrap();
    let s = &cfg.pipelines[0].model.search;
    assert!(s.enabled);
    assert_eq!(s.strategy, Strategy::SuccessiveHalving);
    assert_eq!(s.ranges["mlp"]["units"], [8.0, 64.0]);
}

#[test]
fn an_enabled_search_runs_inside_the_daemons_training_path() {
    let _timed = timed();
    let (data, features) = dataset("basic_motions", Task::Classification);
    let m = model(
        Family::Tree,
        SearchConfig {
            max_trials: 4,
            budget_s: 600.0,
            ..SearchConfig::default()
        },
    );
    let training = learn::train_dataset(
        &settings(&features, &m),
        &data,
        None,
        2,
        Trigger::NewLabels,
        None,
        &|| false,
    )
    .unwrap();
    let search = training
        .chosen
        .card
        .search
        .as_ref()
        .expect("the card records the search");
    assert_eq!(search.trials, 4);
    assert_eq!(
        training.chosen.card.holdout_score,
        search.best.as_ref().unwrap().score
    );
    // Off by default: no search, no `search` in the card's JSON.
    let plain = ModelConfig {
        family: Family::Tree,
        ..ModelConfig::default()
    };
    let training = train(&data, &features, &plain);
    let json = serde_json::to_value(&training.chosen.card).unwrap();
    assert!(json.get("search").is_none());
}

#[test]
fn cli_tune_prints_trials_and_the_card_as_json() {
    let _timed = timed();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgeloop"))
        .args([
            "tune",
            "--file",
            "tests/fixtures/datasets/basic_motions_train.csv",
            "--label",
            "label",
            "--family",
            "tree",
            "--budget",
            "30s",
            "--max-trials",
            "5",
            "--seed",
            "3",
            "--json",
            "--log-level",
            "error",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let trials = v["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 5);
    assert_eq!(trials[0]["family"], "tree");
    assert_eq!(
        trials[0]["params"],
        serde_json::json!({"max_depth": 10, "min_samples_leaf": 1}),
        "trial 0: the default settings"
    );
    for t in trials {
        assert!(t["wall_ms"].as_f64().is_some() && t["cut"] == false);
        assert!(t["score"].as_f64().is_some());
    }
    let card = &v["card"];
    assert_eq!(card["family"], "tree");
    assert_eq!(card["search"]["strategy"], "random");
    assert_eq!(card["search"]["trials"], 5);
    assert_eq!(card["search"]["budget_s"], 30.0);
    assert_eq!(card["holdout_score"], card["search"]["best"]["score"]);
    // The table: trials best first, then the card with its search row.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgeloop"))
        .args([
            "tune",
            "--file",
            "tests/fixtures/datasets/basic_motions_train.csv",
            "--label",
            "label",
            "--family",
            "tree",
            "--budget",
            "30s",
            "--max-trials",
            "3",
            "--log-level",
            "error",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.starts_with("rank"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("search ")), "{table}");
    // A bad budget is refused naming it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgeloop"))
        .args([
            "tune", "--file", "x.csv", "--label", "y", "--budget", "soon",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("budget `soon`"));
}

/// `edgeloop tune` reports each trial's own peak memory, as `edgeloop
/// train` reports each candidate's (not the whole run's, which every trial
/// and the card shared): on 12,000 rows of noise, one trial at a time, the
/// configured logistic regression and forest of 100 unlimited-depth trees,
/// the forest's trial peaks above the logistic's (order only: no bytes or
/// timings asserted), and the chosen card carries its training's own.
#[test]
fn cli_tune_reports_each_trials_own_peak_memory() {
    let _timed = timed();
    let dir = tempfile::tempdir().unwrap();
    let (csv, config) = datasets::noise_with_two_candidates(dir.path());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgeloop"))
        .args([
            "tune",
            "--pipeline",
            "noise",
            "--config",
            config.to_str().unwrap(),
            "--file",
            csv.to_str().unwrap(),
            "--max-trials",
            "2",
            "--threads",
            "1",
            "--budget",
            "300s",
            "--json",
            "--log-level",
            "error",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let trials = v["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 2);
    let peak = |family: &str| {
        trials
            .iter()
            .find(|t| t["family"] == family)
            .and_then(|t| t["peak_rss_bytes"].as_u64())
            .unwrap_or_else(|| panic!("no peak for the {family} trial: {v}"))
    };
    let (logistic, forest) = (peak("logistic"), peak("forest"));
    assert!(logistic > 0);
    assert!(
        forest > logistic,
        "forest {forest} bytes, logistic {logistic}"
    );
    assert!(v["card"]["peak_rss_bytes"].as_u64().unwrap() > 0);
}
