//! The run's figures as SVG charts, beside the JSON: each stage's
//! distribution at the fixed rate (`stages.svg`, from the histograms the
//! services kept over the window), Tally against the machine's limits
//! (`limits.svg`) and CPU by part (`cpu.svg`). Drawn with plotters' SVG
//! backend alone: no font files are read (text is sized by plotters'
//! estimate and drawn by the viewer), so it needs nothing from the system.
//! Measures nothing; a chart whose figures are all missing is not written.

use std::{
    error::Error,
    path::{Path, PathBuf},
};

use anyhow::Context;
use plotters::{
    coord::Shift,
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

use crate::{figure::Figure, report::Medians, report::number, stages::Distribution};

/// One chart's SVG text, or `None` when it has nothing to show.
type Drawn = anyhow::Result<Option<String>>;

/// A drawing step's error: plotters' own, boxed.
type DrawError = Box<dyn Error + Send + Sync>;

/// The bars of the limits chart: the machine's limits, then Tally.
const LIMITS: &[(Figure, &str, bool)] = &[
    (
        Figure::BareTonicCallsPerS,
        "bare tonic unary calls/s",
        false,
    ),
    (
        Figure::BrokerConfirmPerS,
        "RabbitMQ confirmed publishes/s",
        false,
    ),
    (
        Figure::PgInsertTps,
        "PostgreSQL single-row INSERTs/s",
        false,
    ),
    (Figure::AddAcceptedPerS, "Tally Adds acknowledged/s", true),
    (
        Figure::E2eAddsPerS,
        "Tally durable Adds/s, end to end",
        true,
    ),
];

const WIDTH: u32 = 900;
const GREY: RGBColor = RGBColor(150, 150, 150);
const TALLY: RGBColor = RGBColor(31, 119, 180);
/// One colour a line or a part, in order.
const COLOURS: &[RGBColor] = &[
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Writes every chart that has figures into `dir`; returns their paths.
pub fn write_all(
    dir: &Path,
    medians: &Medians,
    distributions: &[Distribution],
) -> anyhow::Result<Vec<PathBuf>> {
    let charts = [
        ("stages.svg", stages(distributions)?),
        ("limits.svg", limits(medians)?),
        ("cpu.svg", cpu(medians)?),
    ];
    let mut written = Vec::new();
    for (name, svg) in charts {
        if let Some(svg) = svg {
            let path = dir.join(name);
            std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
            written.push(path);
        }
    }
    Ok(written)
}

/// Each stage's share of observations at or below x ms (a cumulative
/// distribution, linear between the histogram's bounds), on a log axis.
pub fn stages(distributions: &[Distribution]) -> Drawn {
    let lines: Vec<(&str, Vec<(f64, f64)>)> = distributions
        .iter()
        .filter(|d| d.count() > 0.0)
        .map(|d| (d.stage.label, cumulative(d)))
        .collect();
    let Some((low, high)) = x_range(&lines) else {
        return Ok(None);
    };
    svg(500, |root| {
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Each stage at the fixed rate: share of observations ≤ x",
                ("sans-serif", 20),
            )
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(55)
            .build_cartesian_2d((low..high).log_scale(), 0.0..1.0)?;
        chart
            .configure_mesh()
            .label_style(("sans-serif", 14))
            .x_desc("milliseconds (log scale; histogram bounds, linear between them)")
            .y_desc("share of observations")
            .draw()?;
        for (i, (label, points)) in lines.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    colour.stroke_width(2),
                ))?
                .label(*label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
        }
        legend(&mut chart)
    })
}

/// Horizontal bars: the limits in grey, Tally in colour, each labelled
/// with its median.
pub fn limits(medians: &Medians) -> Drawn {
    let bars: Vec<(String, f64, RGBColor)> = LIMITS
        .iter()
        .filter_map(|&(figure, label, tally)| {
            let value = medians.figure(figure)?;
            let colour = if tally { TALLY } else { GREY };
            Some((format!("{label}: {}", number(value)), value, colour))
        })
        .collect();
    let title = "Tally against the machine's limits (medians, per second)";
    labelled_bars(title, "operations per second", &bars)
}

/// One stacked bar a window (saturation, fixed rate): cores each part kept busy.
pub fn cpu(medians: &Medians) -> Drawn {
    let windows: Vec<(&str, Vec<f64>)> = [("at saturation", false), ("at the fixed rate", true)]
        .into_iter()
        .filter_map(|(label, fixed_rate)| {
            let parts: Vec<Option<f64>> = crate::cpu::FIGURES
                .iter()
                .map(|&(_, saturation, rate)| {
                    medians.figure(if fixed_rate { rate } else { saturation })
                })
                .collect();
            parts
                .iter()
                .any(Option::is_some)
                .then(|| (label, parts.into_iter().map(|v| v.unwrap_or(0.0)).collect()))
        })
        .collect();
    if windows.is_empty() {
        return Ok(None);
    }
    let cores = std::thread::available_parallelism().map_or(2.0, |n| n.get() as f64);
    // Room on the right for the legend.
    let widest = windows
        .iter()
        .map(|(_, parts)| parts.iter().sum::<f64>())
        .fold(cores, f64::max)
        * 1.2;
    let rows = windows.len() as f64;
    svg(120 + 90 * windows.len() as u32, |root| {
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Who used the cores (median cores busy, by part)",
                ("sans-serif", 20),
            )
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(10)
            .build_cartesian_2d(0.0..widest, 0.0..rows)?;
        chart
            .configure_mesh()
            .label_style(("sans-serif", 14))
            .disable_y_mesh()
            .y_labels(0)
            .x_desc(format!("cores ({cores} on this machine)"))
            .draw()?;
        for (k, &(part, _, _)) in crate::cpu::FIGURES.iter().enumerate() {
            let colour = COLOURS[k % COLOURS.len()];
            let segments = windows.iter().enumerate().map(|(row, (_, parts))| {
                let start: f64 = parts[..k].iter().sum();
                let y = rows - row as f64;
                Rectangle::new(
                    [(start, y - 0.75), (start + parts[k], y - 0.25)],
                    colour.filled(),
                )
            });
            chart
                .draw_series(segments)?
                .label(part)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled())
                });
        }
        let labels = windows.iter().enumerate().map(|(row, (label, parts))| {
            let text = format!("{label}: {} cores", number(parts.iter().sum()));
            Text::new(text, (0.0, rows - row as f64 - 0.2), above())
        });
        chart.draw_series(labels)?;
        legend(&mut chart)
    })
}

/// Horizontal bars, top to bottom, each with its label above it.
fn labelled_bars(title: &str, x_desc: &str, bars: &[(String, f64, RGBColor)]) -> Drawn {
    if bars.is_empty() {
        return Ok(None);
    }
    let highest = bars.iter().map(|(_, v, _)| *v).fold(0.0, f64::max).max(1.0);
    let rows = bars.len() as f64;
    svg(100 + 60 * bars.len() as u32, |root| {
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(10)
            .build_cartesian_2d(0.0..highest * 1.05, 0.0..rows)?;
        chart
            .configure_mesh()
            .label_style(("sans-serif", 14))
            .disable_y_mesh()
            .y_labels(0)
            .x_label_formatter(&|v| number(*v))
            .x_desc(x_desc)
            .draw()?;
        chart.draw_series(bars.iter().enumerate().map(|(row, (_, value, colour))| {
            let y = rows - row as f64;
            Rectangle::new([(0.0, y - 0.75), (*value, y - 0.35)], colour.filled())
        }))?;
        chart.draw_series(bars.iter().enumerate().map(|(row, (label, _, _))| {
            Text::new(label.clone(), (0.0, rows - row as f64 - 0.3), above())
        }))?;
        Ok(())
    })
}

/// The series' legend, lower right.
fn legend<'a, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
) -> Result<(), DrawError> {
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// Text anchored at its bottom left: a label just above a bar.
fn above() -> TextStyle<'static> {
    TextStyle::from(("sans-serif", 15).into_font()).pos(Pos::new(HPos::Left, VPos::Bottom))
}

/// Renders `draw` onto an SVG `WIDTH` wide and `height` high.
fn svg(
    height: u32,
    draw: impl FnOnce(DrawingArea<SVGBackend<'_>, Shift>) -> Result<(), DrawError>,
) -> Drawn {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        draw(root.clone()).map_err(|e| anyhow::anyhow!("drawing a chart: {e}"))?;
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(Some(out))
}

/// `(ms, share ≤ ms)` at each finite bound of a distribution.
fn cumulative(distribution: &Distribution) -> Vec<(f64, f64)> {
    let total = distribution.count();
    distribution
        .buckets
        .iter()
        .filter(|(le, _)| le.is_finite() && *le > 0.0)
        .map(|(le, count)| (*le, count / total))
        .collect()
}

/// From the highest bound below which no line has anything yet to the
/// lowest bound where every line is complete (at least a decade wide).
fn x_range(lines: &[(&str, Vec<(f64, f64)>)]) -> Option<(f64, f64)> {
    let low = lines
        .iter()
        .filter_map(|(_, points)| {
            points
                .iter()
                .take_while(|(_, share)| *share <= 0.0)
                .last()
                .map(|(ms, _)| *ms)
                .or_else(|| points.first().map(|(ms, _)| *ms))
        })
        .fold(f64::INFINITY, f64::min);
    let high = lines
        .iter()
        .filter_map(|(_, points)| {
            points
                .iter()
                .find(|(_, share)| *share >= 1.0)
                .or(points.last())
                .map(|(ms, _)| *ms)
        })
        .fold(0.0, f64::max);
    (low.is_finite() && high > 0.0).then(|| (low, high.max(low * 10.0)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{report::Round, stages};

    fn medians(figures: &[(Figure, f64)]) -> Medians {
        Medians::of(&[figures.iter().copied().collect::<Round>()])
    }

    #[test]
    fn limits_chart_shows_each_measured_bar_with_its_median() {
        let svg = limits(&medians(&[
            (Figure::BareTonicCallsPerS, 31_234.0),
            (Figure::E2eAddsPerS, 9_246.0),
        ]))
        .unwrap()
        .unwrap();
        assert!(svg.starts_with("<svg"), "{svg:.80}");
        assert!(svg.contains("bare tonic unary calls/s: 31,234"));
        assert!(svg.contains("Tally durable Adds/s, end to end: 9,246"));
        assert!(
            !svg.contains("PostgreSQL single-row"),
            "an unmeasured bar is left out"
        );
        assert!(svg.matches("<rect").count() >= 3, "background and two bars");
    }

    #[test]
    fn charts_without_figures_are_not_drawn() {
        let nothing = Medians::default();
        assert!(limits(&nothing).unwrap().is_none());
        assert!(cpu(&nothing).unwrap().is_none());
        assert!(stages(&[]).unwrap().is_none());
    }

    #[test]
    fn cpu_chart_stacks_every_part_of_each_window() {
        let svg = cpu(&medians(&[
            (Figure::CpuSaturationAdder, 0.6),
            (Figure::CpuSaturationPostgres, 0.5),
            (Figure::CpuFixedRateAdder, 0.1),
        ]))
        .unwrap()
        .unwrap();
        assert!(
            svg.contains("at saturation: 1.10 cores"),
            "the sum of the parts"
        );
        assert!(svg.contains("at the fixed rate: 0.10 cores"));
        for part in ["adder", "totaler", "postgres", "rabbitmq", "bench", "other"] {
            assert!(
                svg.contains(&format!(">\n{part}\n</text>")),
                "legend for {part}"
            );
        }
    }

    #[test]
    fn stage_chart_draws_a_line_from_each_observed_histogram() {
        let observed = Distribution {
            stage: &stages::TOTALER[0],
            buckets: vec![
                (0.5, 0.0),
                (1.0, 40.0),
                (2.0, 90.0),
                (5.0, 100.0),
                (f64::INFINITY, 100.0),
            ],
        };
        let empty = Distribution {
            stage: &stages::TOTALER[1],
            buckets: vec![(1.0, 0.0), (f64::INFINITY, 0.0)],
        };
        assert_eq!(
            cumulative(&observed),
            vec![(0.5, 0.0), (1.0, 0.4), (2.0, 0.9), (5.0, 1.0)]
        );
        let svg = stages(&[observed, empty]).unwrap().unwrap();
        assert!(svg.contains(stages::TOTALER[0].label));
        assert!(
            !svg.contains(stages::TOTALER[1].label),
            "a stage that saw nothing has no line"
        );
        assert!(svg.contains("<polyline"), "a line is drawn");
    }

    #[test]
    fn write_all_writes_the_charts_that_have_figures() {
        let dir = std::env::temp_dir().join(format!("bench-charts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let written = write_all(&dir, &medians(&[(Figure::PgInsertTps, 5_000.0)]), &[]).unwrap();
        assert_eq!(written, vec![dir.join("limits.svg")]);
        assert!(
            std::fs::read_to_string(dir.join("limits.svg"))
                .unwrap()
                .contains("5,000")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
