//! What a run reports: the figures of [`crate::figure`] (one value per
//! round, the median reported), the ratios of Tally's medians to the
//! limits' medians, and the targets. Renders a Markdown table for stdout
//! and BENCHMARKS.md, and the JSON document; measures nothing.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::figure::{Figure, RATIOS, Ratio, Target};

/// One round's figures.
pub type Round = BTreeMap<Figure, f64>;

/// The medians of a run: of every figure measured at least once, and of
/// every ratio whose two figures were.
#[derive(Debug, Default, Clone)]
pub struct Medians {
    figures: BTreeMap<Figure, f64>,
    ratios: BTreeMap<&'static str, f64>,
}

impl Medians {
    pub fn of(rounds: &[Round]) -> Self {
        let mut figures = BTreeMap::new();
        for &figure in Figure::ALL {
            let mut values: Vec<f64> = rounds
                .iter()
                .filter_map(|r| r.get(&figure).copied())
                .collect();
            if let Some(median) = median(&mut values) {
                figures.insert(figure, median);
            }
        }
        let mut ratios = BTreeMap::new();
        for ratio in RATIOS {
            if let (Some(n), Some(d)) = (
                figures.get(&ratio.numerator),
                figures.get(&ratio.denominator),
            ) && *d > 0.0
            {
                ratios.insert(ratio.key, n / d);
            }
        }
        Self { figures, ratios }
    }

    pub fn figure(&self, figure: Figure) -> Option<f64> {
        self.figures.get(&figure).copied()
    }

    pub fn ratio(&self, ratio: &Ratio) -> Option<f64> {
        self.ratios.get(ratio.key).copied()
    }
}

/// The median (mean of the middle two for an even count).
pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

/// The Markdown table: every figure with its median and rounds, the ratios,
/// and each target with whether it is met.
pub fn table(rounds: &[Round], medians: &Medians) -> String {
    let mut out =
        String::from("| figure | key | median | per round | target |\n|---|---|---:|---|---|\n");
    for &figure in Figure::ALL {
        let per_round: Vec<String> = rounds
            .iter()
            .map(|r| r.get(&figure).map_or("-".into(), |v| number(*v)))
            .collect();
        let median = medians.figure(figure);
        out.push_str(&format!(
            "| {} | `{}` | {} {} | {} | {} |\n",
            figure.label(),
            figure.key(),
            median.map_or("-".into(), number),
            figure.unit(),
            per_round.join(", "),
            target_cell(figure.target(), median),
        ));
    }
    for ratio in RATIOS {
        let median = medians.ratio(ratio);
        out.push_str(&format!(
            "| {} | `{}` | {} | (of medians) | {} |\n",
            ratio.label,
            ratio.key,
            median.map_or("-".into(), |v| format!("{v:.2}")),
            target_cell(ratio.target, median),
        ));
    }
    out
}

/// The JSON document: every median at the top level under its key, then
/// the rounds, the targets and what the caller adds to `meta`.
pub fn json(rounds: &[Round], medians: &Medians, meta: Value) -> Value {
    let mut document = Map::new();
    for (figure, value) in &medians.figures {
        document.insert(figure.key().to_owned(), json!(value));
    }
    for (key, value) in &medians.ratios {
        document.insert((*key).to_owned(), json!(value));
    }
    let figure_targets = Figure::ALL
        .iter()
        .filter_map(|&f| Some((f.key(), f.target()?, medians.figure(f))));
    let ratio_targets = RATIOS
        .iter()
        .filter_map(|r| Some((r.key, r.target?, medians.ratio(r))));
    let targets: Vec<Value> = figure_targets
        .chain(ratio_targets)
        .map(|(key, target, median)| {
            json!({
                "key": key,
                "at_least": target.at_least,
                "value": target.value,
                "met": median.map(|v| target.met(v)),
            })
        })
        .collect();
    document.insert("targets".into(), Value::Array(targets));
    let rounds: Vec<Value> = rounds
        .iter()
        .map(|round| {
            Value::Object(
                round
                    .iter()
                    .map(|(f, v)| (f.key().to_owned(), json!(v)))
                    .collect(),
            )
        })
        .collect();
    document.insert("rounds".into(), Value::Array(rounds));
    document.insert("meta".into(), meta);
    Value::Object(document)
}

fn target_cell(target: Option<Target>, median: Option<f64>) -> String {
    let Some(target) = target else {
        return String::new();
    };
    let sign = if target.at_least { "≥" } else { "≤" };
    let verdict = match median {
        Some(v) if target.met(v) => "met",
        Some(_) => "**missed**",
        None => "not measured",
    };
    format!("{sign} {} — {verdict}", number(target.value))
}

/// Three significant-ish digits for small values, whole numbers with
/// thousands separators for large ones.
pub fn number(value: f64) -> String {
    if value.abs() >= 100.0 {
        let whole = value.round() as i64;
        let digits = whole.abs().to_string();
        let mut grouped = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(c);
        }
        if whole < 0 {
            format!("-{grouped}")
        } else {
            grouped
        }
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }

    #[test]
    fn ratios_come_from_medians() {
        let rounds = vec![
            Round::from([
                (Figure::E2eAddsPerS, 4000.0),
                (Figure::BrokerConfirmPerS, 10000.0),
            ]),
            Round::from([
                (Figure::E2eAddsPerS, 6000.0),
                (Figure::BrokerConfirmPerS, 10000.0),
            ]),
        ];
        let medians = Medians::of(&rounds);
        assert_eq!(medians.ratio(&RATIOS[0]), Some(0.5));
        assert!(table(&rounds, &medians).contains("≥ 0.50 — met"));
    }

    #[test]
    fn every_figure_recorded_is_in_the_table_and_at_the_top_of_the_json() {
        let round: Round = Figure::ALL
            .iter()
            .enumerate()
            .map(|(i, &f)| (f, i as f64 + 1.0))
            .collect();
        let rounds = vec![round];
        let medians = Medians::of(&rounds);
        let table = table(&rounds, &medians);
        let document = json(&rounds, &medians, json!({}));
        for (i, figure) in Figure::ALL.iter().enumerate() {
            let row = format!(
                "| {} | `{}` | {} {} |",
                figure.label(),
                figure.key(),
                number(i as f64 + 1.0),
                figure.unit()
            );
            assert!(table.contains(&row), "no row {row}");
            assert_eq!(
                document[figure.key()],
                json!(i as f64 + 1.0),
                "{}",
                figure.key()
            );
            assert_eq!(document["rounds"][0][figure.key()], json!(i as f64 + 1.0));
        }
        for ratio in RATIOS {
            assert!(document[ratio.key].is_number(), "{}", ratio.key);
        }
    }

    #[test]
    fn targets_say_met_missed_or_not_measured() {
        let rounds = vec![Round::from([(Figure::AddP99Ms, 7.0)])];
        let medians = Medians::of(&rounds);
        let table = table(&rounds, &medians);
        assert!(table.contains("| ≤ 5.00 — **missed** |"), "{table}");
        assert!(table.contains("| ≥ 8,000 — not measured |"), "{table}");
        let document = json(&rounds, &medians, json!({}));
        let targets = document["targets"].as_array().unwrap();
        let add_p99 = targets.iter().find(|t| t["key"] == "add_p99_ms").unwrap();
        assert_eq!(add_p99["met"], json!(false));
        let e2e = targets
            .iter()
            .find(|t| t["key"] == "e2e_adds_per_s")
            .unwrap();
        assert_eq!(e2e["met"], Value::Null);
    }

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(number(12345.6), "12,346");
        assert_eq!(number(999.0), "999");
        assert_eq!(number(4.321), "4.32");
    }
}
