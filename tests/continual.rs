//! The continuous-learning loop on the UCI Gas Sensor Array Drift data
//! (Vergara et al. 2012; batches in time order, 36 months of sensor drift).

use edgeloop::config::ModelConfig;
use edgeloop::learn::model::argmax_rows;
use edgeloop::learn::Model;
use edgeloop::monitor::continual::{fit, ContinualConfig, ContinualLoop};

type Row = (Vec<f32>, String);

/// Batch `b`: 128 features, the gas as label.
fn batch(b: u32) -> Vec<Row> {
    let path = format!(
        "{}/data/gas_sensor_drift/batch{b}.dat",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.trim().split(',').collect();
            (
                f[2..130]
                    .iter()
                    .map(|v| v.parse::<f32>().unwrap())
                    .collect(),
                f[0].to_string(),
            )
        })
        .collect()
}

fn features() -> Vec<String> {
    (1..=128).map(|i| format!("f{i}")).collect()
}

fn train(rows: &[Row], cfg: &ContinualConfig) -> Model {
    let refs: Vec<&Row> = rows.iter().collect();
    fit(&refs, &features(), &cfg.model, None).unwrap()
}

fn predict(m: &Model, x: &[f32]) -> String {
    m.classes()[argmax_rows(&m.predict(x), m.classes().len())[0]].clone()
}

#[test]
fn loop_beats_the_frozen_batch1_model_on_every_later_batch() {
    let cfg = ContinualConfig::default();
    let b1 = batch(1);
    let frozen = train(&b1, &cfg);
    let mut live = ContinualLoop::new(cfg, features()).with_champion(frozen.clone());
    for (x, l) in &b1 {
        live.remember(x, l);
    }
    let (mut sum_live, mut sum_frozen) = (0.0, 0.0);
    eprintln!("batch  n     loop (prequential)  frozen batch-1 model");
    for b in [2, 3, 4, 5, 6, 8, 9] {
        let rows = batch(b);
        let (mut ok_live, mut ok_frozen) = (0usize, 0usize);
        for (x, l) in &rows {
            ok_frozen += usize::from(&predict(&frozen, x) == l);
            ok_live += usize::from(live.observe(x, l).as_deref() == Some(l.as_str()));
        }
        let (a_live, a_frozen) = (
            ok_live as f64 / rows.len() as f64,
            ok_frozen as f64 / rows.len() as f64,
        );
        eprintln!("{b:<6} {:<5} {a_live:<19.4} {a_frozen:.4}", rows.len());
        assert!(
            a_live > a_frozen,
            "batch {b}: loop {a_live} vs frozen {a_frozen}"
        );
        sum_live += a_live;
        sum_frozen += a_frozen;
    }
    let (m_live, m_frozen) = (sum_live / 7.0, sum_frozen / 7.0);
    eprintln!(
        "mean over batches 2-9: loop {m_live:.4}, frozen {m_frozen:.4}; {} alarms, {} trainings, {} promotions",
        live.alarms.len(),
        live.decisions.len(),
        live.decisions.iter().filter(|d| d.promoted).count()
    );
    assert!(
        m_live - m_frozen >= 0.15,
        "mean gain {:.4}",
        m_live - m_frozen
    );
}

#[test]
fn forgetting_guard_keeps_a_gas_absent_from_recent_batches() {
    // Champion trained on batches 1-2 (all six gases); then batches 3-5,
    // which hold no Toluene, with challengers fine-tuned on recent data only.
    let cfg = ContinualConfig {
        model: ModelConfig {
            reservoir_in_training: false,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut old = batch(1);
    old.extend(batch(2));
    let champion = train(&old, &cfg);
    assert!(champion.classes().iter().any(|c| c == "Toluene"));
    let mut live = ContinualLoop::new(cfg.clone(), features()).with_champion(champion);
    for (x, l) in &old {
        live.remember(x, l);
    }
    for b in [3, 4, 5] {
        let rows = batch(b);
        assert!(rows.iter().all(|(_, l)| l != "Toluene"));
        for (x, l) in &rows {
            live.observe(x, l);
        }
    }
    for d in &live.decisions {
        eprintln!("{d:?}");
        if d.promoted {
            let (c, h) = (d.challenger_old.unwrap(), d.champion_old.unwrap());
            assert!(
                c >= h - cfg.model.margin_old,
                "promoted despite old-regime loss: {d:?}"
            );
        }
    }
    let rejected_for_old = live
        .decisions
        .iter()
        .filter(|d| !d.promoted && d.reason.starts_with("older regimes"))
        .count();
    assert!(
        rejected_for_old >= 1,
        "some challenger must have forgotten and been refused"
    );
    // The serving model still knows Toluene.
    let m = live.champion().unwrap();
    let toluene: Vec<&Row> = old.iter().filter(|(_, l)| l == "Toluene").collect();
    let recalled = toluene
        .iter()
        .filter(|(x, _)| predict(m, x) == "Toluene")
        .count();
    eprintln!(
        "Toluene recall of the final champion on batches 1-2: {recalled}/{}",
        toluene.len()
    );
    assert!(recalled as f64 >= 0.9 * toluene.len() as f64);
}
