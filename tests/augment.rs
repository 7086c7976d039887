//! Augmentation and class balance of training rows through the loop's one
//! training path (`learn::train_dataset`): added rows never reach a holdout
//! or a validation fold, draws are seeded, the noise has the distribution
//! its definition gives, balanced class weights equal scikit-learn's
//! (`tests/fixtures/balance/gen_balance.py`), oversampling yields the
//! composition the card reports, and holdout scores on the shared datasets
//! with and without augmentation (printed, not asserted).

#[path = "common/datasets.rs"]
mod datasets;

use edgeloop::config::{validate_model, ModelConfig};
use edgeloop::features::augment::{augment, feature_sd, AugmentConfig};
use edgeloop::features::balance::{self, BalanceConfig, BalanceStrategy};
use edgeloop::ingest::csv_file::LabelledCsv;
use edgeloop::learn::logistic::{LogisticConfig, LogisticModel};
use edgeloop::learn::select::Evaluation;
use edgeloop::learn::tree::TreeConfig;
use edgeloop::learn::{self, offline, Dataset, Family, Task, TrainSettings, Trigger};

fn train(data: &Dataset, features: &[String], model: &ModelConfig) -> learn::Training {
    let settings = TrainSettings {
        pipeline: "test",
        features,
        model,
        progress: None,
        peak_rss: false,
    };
    learn::train_dataset(&settings, data, None, 1, Trigger::Manual, None, &|| false).unwrap()
}

/// `n` rows of 3 uniform features and labels that do not depend on them
/// (seeded), in time order.
fn noise_labels(n: usize) -> (Dataset, Vec<String>) {
    let mut rng = fastrand::Rng::with_seed(11);
    let mut d = Dataset::empty(Task::Classification, vec!["a".into(), "b".into()], 3);
    for i in 0..n {
        d.x.extend((0..3).map(|_| rng.f32()));
        d.y.push(rng.usize(..2));
        d.timestamps.push(i as i64 * 1000);
    }
    (d, ["f0", "f1", "f2"].map(String::from).to_vec())
}

/// A tree that memorises its training rows: a near-copy of a training row
/// in a holdout or fold would be predicted right.
fn memorising_tree() -> ModelConfig {
    ModelConfig {
        family: Family::Tree,
        tree: TreeConfig {
            max_depth: 0,
            ..TreeConfig::default()
        },
        evaluation: Evaluation::Kfold,
        folds: 5,
        ..ModelConfig::default()
    }
}

fn tiny_jitter(copies: usize) -> AugmentConfig {
    AugmentConfig {
        copies,
        jitter: 0.001,
        ..AugmentConfig::default()
    }
}

#[test]
fn augmented_rows_never_reach_the_holdout_or_a_validation_fold() {
    let (data, features) = noise_labels(400);
    let plain = memorising_tree();
    let augmented = ModelConfig {
        augment: tiny_jitter(5),
        ..plain.clone()
    };
    let base = train(&data, &features, &plain).chosen.card;
    let card = train(&data, &features, &augmented).chosen.card;
    // The holdout is exactly the unaugmented split's: same rows, classes
    // and time range; every confusion-matrix row sums to its support.
    assert_eq!(card.n_holdout, base.n_holdout);
    assert_eq!(card.n_train, base.n_train);
    assert_eq!(
        card.class_composition_holdout,
        base.class_composition_holdout
    );
    assert_eq!(card.holdout_time_range_ms, base.holdout_time_range_ms);
    assert_eq!(card.train_time_range_ms, base.train_time_range_ms);
    let confusion_total: u64 = card
        .holdout
        .as_ref()
        .unwrap()
        .confusion
        .iter()
        .flatten()
        .sum();
    assert_eq!(confusion_total, card.n_holdout);
    // The trainer saw 6 × the training part.
    let a = card.augmentation.as_ref().unwrap();
    assert_eq!(a.rows_added, 5 * card.n_train);
    assert_eq!(a.transforms, vec!["jitter=0.001"]);
    let times6: std::collections::BTreeMap<String, u64> = card
        .class_composition_before
        .iter()
        .map(|(k, v)| (k.clone(), 6 * v))
        .collect();
    assert_eq!(card.class_composition_before, card.class_composition_train);
    assert_eq!(card.class_composition_after, times6);
    // Labels are noise: on unseen rows the tree is at chance.
    let cv = card.cv.as_ref().unwrap();
    let holdout = card.holdout_score.unwrap();
    println!(
        "noise labels, augmented inside the training path: holdout {holdout:.3}, cv {:.3} {:?}",
        cv.mean, cv.per_fold
    );
    assert!(holdout < 0.7 && cv.mean < 0.7, "{holdout} {}", cv.mean);

    // Control: augmenting before the splits (the leak) puts near-copies of
    // training rows into the holdout and every fold, and the same checks
    // fail.
    let leaked = augment(&data, &tiny_jitter(5), &[], 0);
    let card = train(&leaked, &features, &plain).chosen.card;
    let (holdout, cv) = (card.holdout_score.unwrap(), card.cv.unwrap().mean);
    println!("control, augmented before the splits: holdout {holdout:.3}, cv {cv:.3}");
    assert!(holdout > 0.9 && cv > 0.9, "{holdout} {cv}");
    assert_ne!(card.n_holdout, base.n_holdout);
}

#[test]
fn mlp_early_stopping_rows_are_not_augmented() {
    let (data, features) = noise_labels(300);
    let model = ModelConfig {
        family: Family::Mlp,
        augment: tiny_jitter(3),
        ..ModelConfig::default()
    };
    let mut cfg = model.clone();
    cfg.mlp.max_epochs = 30;
    let card = train(&data, &features, &cfg).chosen.card;
    let n_train = card.n_train;
    let n_val = (cfg.mlp.validation_fraction * n_train as f64).ceil() as u64;
    // Only the rows outside the early-stopping split were copied.
    assert_eq!(
        card.augmentation.as_ref().unwrap().rows_added,
        3 * (n_train - n_val)
    );
    let after: u64 = card.class_composition_after.values().sum();
    assert_eq!(after, n_train + 3 * (n_train - n_val));
}

#[test]
fn same_seed_same_rows() {
    let (data, features) = noise_labels(200);
    let cfg = AugmentConfig {
        copies: 2,
        jitter: 0.1,
        scaling: 0.1,
        time_shift: 3,
        mixup: 0.4,
        seed: 5,
        ..AugmentConfig::default()
    };
    let a = augment(&data, &cfg, &[], 0);
    assert_eq!(a, augment(&data, &cfg, &[], 0));
    assert_eq!(a.len(), 600);
    let other = augment(
        &data,
        &AugmentConfig {
            seed: 6,
            ..cfg.clone()
        },
        &[],
        0,
    );
    assert_ne!(a.x, other.x);
    // Windows: shift and slice, seeded too.
    let w = AugmentConfig {
        time_shift: 1,
        window_slice: 0.3,
        windows: vec![features.clone()],
        ..cfg.clone()
    };
    let idx = w.window_indices(&features).unwrap();
    assert_eq!(augment(&data, &w, &idx, 0), augment(&data, &w, &idx, 0));
    // Through training: the same served model.
    let model = ModelConfig {
        augment: cfg,
        balance: BalanceConfig {
            strategy: BalanceStrategy::Oversample,
            ..BalanceConfig::default()
        },
        ..ModelConfig::default()
    };
    let (t1, t2) = (
        train(&data, &features, &model),
        train(&data, &features, &model),
    );
    assert_eq!(
        t1.chosen.model.predict(&data.x),
        t2.chosen.model.predict(&data.x)
    );
    assert_eq!(t1.chosen.card.augmentation, t2.chosen.card.augmentation);
}

#[test]
fn jitter_and_scaling_noise_follow_their_definitions() {
    // Feature 0 ~ U(0, 10) (sd 10/√12), feature 1 constant 2.
    let n = 20_000;
    let mut rng = fastrand::Rng::with_seed(1);
    let mut d = Dataset::empty(Task::Regression, vec![], 2);
    for i in 0..n {
        d.x.extend([10.0 * rng.f32(), 2.0]);
        d.values.push(0.0);
        d.timestamps.push(i as i64);
    }
    let sd = feature_sd(&d.x, 2);
    let stats = |v: &[f64]| {
        let m = v.iter().sum::<f64>() / v.len() as f64;
        let s = (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        (m, s)
    };
    // Jitter σ = 0.1: ε ~ N(0, (0.1·sd)²) on feature 0, none on the constant.
    let a = augment(
        &d,
        &AugmentConfig {
            copies: 1,
            jitter: 0.1,
            ..Default::default()
        },
        &[],
        0,
    );
    let eps: Vec<f64> = (0..n)
        .map(|i| f64::from(a.x[(n + i) * 2]) - f64::from(d.x[i * 2]))
        .collect();
    let (m, s) = stats(&eps);
    let want = 0.1 * sd[0];
    println!(
        "jitter: mean {m:.5} (want 0 ± {:.5}), sd {s:.5} (want {want:.5})",
        4.0 * want / (n as f64).sqrt()
    );
    assert!(m.abs() < 4.0 * want / (n as f64).sqrt());
    assert!((s / want - 1.0).abs() < 0.03);
    assert!((n..2 * n).all(|r| a.x[r * 2 + 1] == 2.0));
    // Scaling σ = 0.2: one factor ~ N(1, 0.04) per row, on every feature.
    let a = augment(
        &d,
        &AugmentConfig {
            copies: 1,
            scaling: 0.2,
            ..Default::default()
        },
        &[],
        0,
    );
    let factor: Vec<f64> = (0..n)
        .map(|i| f64::from(a.x[(n + i) * 2 + 1]) / 2.0)
        .collect();
    let (m, s) = stats(&factor);
    println!("scaling: factor mean {m:.5} (want 1), sd {s:.5} (want 0.2)");
    assert!((m - 1.0).abs() < 4.0 * 0.2 / (n as f64).sqrt());
    assert!((s / 0.2 - 1.0).abs() < 0.03);
    for (i, f) in factor.iter().enumerate().filter(|(i, _)| d.x[i * 2] > 1e-3) {
        let f0 = f64::from(a.x[(n + i) * 2]) / f64::from(d.x[i * 2]);
        assert!((f0 - f).abs() < 1e-4, "row {i}: {f0} vs {f}");
    }
    // Mixup is a convex combination: a constant feature stays constant.
    let a = augment(
        &d,
        &AugmentConfig {
            copies: 1,
            mixup: 0.4,
            ..Default::default()
        },
        &[],
        0,
    );
    assert!((n..2 * n).all(|r| (a.x[r * 2 + 1] - 2.0).abs() < 1e-6));
}

fn fixture() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/balance/balance.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn usizes(v: &serde_json::Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect()
}

#[test]
fn balanced_class_weights_equal_scikit_learn() {
    let f = fixture();
    for case in f["class_weight"].as_array().unwrap() {
        let y = usizes(&case["y"]);
        let want: Vec<f64> = case["weights"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let got = balance::balanced_class_weight(&y, want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-12 * w, "{got:?} vs {want:?}");
        }
    }
    // The class-weighted logistic loss equals sklearn's class_weight="balanced",
    // with three classes (softmax) and two (the sigmoid model).
    for (case, k) in [("weighted_logistic", 3), ("weighted_logistic_binary", 2)] {
        let c = &f[case];
        let y = usizes(&c["y"]);
        let x: Vec<f32> = c["x"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().map_or(f32::NAN, |v| v as f32))
            })
            .collect();
        let w = balance::balanced_class_weight(&y, k);
        let sample_weight: Vec<f64> = y.iter().map(|&k| w[k]).collect();
        let cfg = LogisticConfig {
            l2: c["l2"].as_f64().unwrap(),
            max_iter: 5000,
            gtol: 1e-10,
        };
        let classes: Vec<String> = (0..k).map(|c| c.to_string()).collect();
        let features = vec!["a".to_string(), "b".into()];
        let m = LogisticModel::fit_weighted(
            &x,
            &y,
            classes,
            features,
            &cfg,
            None,
            Some(&sample_weight),
            || false,
        )
        .unwrap();
        let got = m.predict_proba(&x);
        let want: Vec<f64> = c["proba"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
            .collect();
        let worst = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (f64::from(*g) - w).abs())
            .fold(0.0, f64::max);
        println!("{case} vs sklearn: worst probability difference {worst:.2e}");
        assert!(worst < 1e-5, "{case}: {worst}");
    }
}

/// 200 / 40 / 10 rows of three classes, interleaved in time.
fn skewed() -> (Dataset, Vec<String>) {
    let mut rng = fastrand::Rng::with_seed(4);
    let classes = vec!["a".to_string(), "b".into(), "c".into()];
    let mut d = Dataset::empty(Task::Classification, classes, 2);
    let mut labels: Vec<usize> = [(0, 200), (1, 40), (2, 10)]
        .iter()
        .flat_map(|&(c, n)| std::iter::repeat_n(c, n))
        .collect();
    rng.shuffle(&mut labels);
    for (i, &c) in labels.iter().enumerate() {
        d.x.extend([c as f32 + rng.f32(), rng.f32()]);
        d.y.push(c);
        d.timestamps.push(i as i64);
    }
    (d, vec!["f0".into(), "f1".into()])
}

#[test]
fn oversampling_yields_the_documented_composition() {
    let (data, features) = skewed();
    let with = |strategy, family, ratio| ModelConfig {
        family,
        balance: BalanceConfig {
            strategy,
            ratio,
            seed: 0,
        },
        ..ModelConfig::default()
    };
    let card = train(
        &data,
        &features,
        &with(BalanceStrategy::Oversample, Family::Logistic, 1.0),
    )
    .chosen
    .card;
    let before = card.class_composition_before.clone();
    assert_eq!(before, card.class_composition_train);
    let majority = *before.values().max().unwrap();
    println!(
        "oversample 1.0: before {before:?}, after {:?}",
        card.class_composition_after
    );
    assert!(card
        .class_composition_after
        .values()
        .all(|&v| v == majority));
    let added: u64 = before.values().map(|v| majority - v).sum();
    assert_eq!(card.augmentation.as_ref().unwrap().rows_oversampled, added);
    // ratio 0.5: classes below ⌊0.5·majority⌋ are raised to it, others kept.
    let card = train(
        &data,
        &features,
        &with(BalanceStrategy::Oversample, Family::Logistic, 0.5),
    )
    .chosen
    .card;
    for (k, &v) in &card.class_composition_after {
        assert_eq!(v, before[k].max(majority / 2), "{k}");
    }
    // class_weight: oversampling by weight for a tree, weights for logistic.
    let card = train(
        &data,
        &features,
        &with(BalanceStrategy::ClassWeight, Family::Tree, 1.0),
    )
    .chosen
    .card;
    assert!(card
        .class_composition_after
        .values()
        .all(|&v| v == majority));
    let card = train(
        &data,
        &features,
        &with(BalanceStrategy::ClassWeight, Family::Logistic, 1.0),
    )
    .chosen
    .card;
    assert_eq!(card.class_composition_after, before);
    let a = card.augmentation.unwrap();
    let n: u64 = before.values().sum();
    for (k, w) in &a.class_weight {
        assert!((w - n as f64 / (3.0 * before[k] as f64)).abs() < 1e-12);
    }
    // The table shows both rows.
    let table = learn::card::render_table(
        &[train(
            &data,
            &features,
            &with(BalanceStrategy::Oversample, Family::Logistic, 1.0),
        )
        .chosen
        .card],
        None,
    );
    assert!(
        table.contains("classes before / after") && table.contains("oversample (+"),
        "{table}"
    );
}

#[test]
fn bad_settings_are_refused_naming_the_key() {
    let bad = |m: ModelConfig, task| {
        validate_model(&m, Some(task), "model.")
            .unwrap_err()
            .to_string()
    };
    let m = |augment, balance| ModelConfig {
        augment,
        balance,
        ..ModelConfig::default()
    };
    let err = bad(
        m(
            AugmentConfig {
                copies: 1,
                scaling: -0.5,
                ..Default::default()
            },
            Default::default(),
        ),
        Task::Classification,
    );
    assert!(
        err.starts_with("config key `model.augment.scaling`"),
        "{err}"
    );
    let err = bad(
        m(
            AugmentConfig {
                copies: 21,
                jitter: 0.1,
                ..Default::default()
            },
            Default::default(),
        ),
        Task::Classification,
    );
    assert!(
        err.starts_with("config key `model.augment.copies`"),
        "{err}"
    );
    let over = BalanceConfig {
        strategy: BalanceStrategy::Oversample,
        ..Default::default()
    };
    let err = bad(
        ModelConfig {
            family: Family::Ridge,
            ..m(Default::default(), over)
        },
        Task::Regression,
    );
    assert!(
        err.starts_with("config key `model.balance.strategy`"),
        "{err}"
    );
    // A window naming a feature the data lacks fails the training, named.
    let (data, features) = noise_labels(50);
    let cfg = ModelConfig {
        augment: AugmentConfig {
            copies: 1,
            time_shift: 1,
            windows: vec![vec!["f0".into(), "nope".into()]],
            ..Default::default()
        },
        min_labels: 10,
        ..ModelConfig::default()
    };
    let settings = TrainSettings {
        pipeline: "t",
        features: &features,
        model: &cfg,
        progress: None,
        peak_rss: false,
    };
    let err = learn::train_dataset(&settings, &data, None, 1, Trigger::Manual, None, &|| false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("windows[0]") && err.contains("nope"), "{err}");
}

#[test]
fn holdout_scores_with_and_without_augmentation_on_the_shared_datasets() {
    let augment = AugmentConfig {
        copies: 2,
        jitter: 0.05,
        scaling: 0.05,
        mixup: 0.2,
        seed: 0,
        ..Default::default()
    };
    for name in datasets::CLASSIFICATION {
        let (train_split, test, _) = datasets::load(name);
        let mut x = train_split.x.clone();
        x.extend_from_slice(&test.x);
        let labels: Vec<String> = train_split
            .labels
            .iter()
            .chain(&test.labels)
            .cloned()
            .collect();
        let csv = LabelledCsv {
            features: train_split.features.clone(),
            x,
            labels,
        };
        let data = offline::dataset(&csv, Task::Classification);
        for family in [Family::Logistic, Family::Tree] {
            let plain = ModelConfig {
                family,
                ..ModelConfig::default()
            };
            let aug = ModelConfig {
                augment: augment.clone(),
                ..plain.clone()
            };
            let bal = ModelConfig {
                balance: BalanceConfig {
                    strategy: BalanceStrategy::ClassWeight,
                    ..Default::default()
                },
                ..plain.clone()
            };
            let score = |m: &ModelConfig| {
                let c = train(&data, &train_split.features, m).chosen.card;
                let h = c.holdout.unwrap();
                (h.accuracy, h.f1_macro)
            };
            let (p, a, b) = (score(&plain), score(&aug), score(&bal));
            println!(
                "{name:14} {:8} accuracy / F1 macro: plain {:.4} / {:.4}, augmented {:.4} / {:.4}, class_weight {:.4} / {:.4}",
                family.name(), p.0, p.1, a.0, a.1, b.0, b.1
            );
        }
    }
}
