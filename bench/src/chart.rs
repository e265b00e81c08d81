//! The PNG chart of a run: throughput per target and concurrency level, the median run of the
//! rounds (left), and latency percentiles at the fixed rate, all rounds together (right, log
//! scale).

use std::path::Path;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::results::Results;

/// A TrueType font for the labels (Debian's `fonts-dejavu-core`).
pub const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

const PALETTE: [RGBColor; 4] = [
    RGBColor(0x4e, 0x79, 0xa7),
    RGBColor(0xf2, 0x8e, 0x2b),
    RGBColor(0x59, 0xa1, 0x4f),
    RGBColor(0xe1, 0x57, 0x59),
];

fn register_font() -> anyhow::Result<()> {
    for path in FONT_PATHS {
        if let Ok(bytes) = std::fs::read(path) {
            // The font registry wants 'static bytes; one font per process, read once.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| anyhow::anyhow!("{path}: not a usable font"))?;
            return Ok(());
        }
    }
    anyhow::bail!("no font found (tried {FONT_PATHS:?}); install fonts-dejavu-core")
}

/// Draws `results` into a PNG at `path`.
pub fn draw(results: &Results, path: &Path) -> anyhow::Result<()> {
    register_font()?;
    let root = BitMapBackend::new(path, (1600, 720)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let subtitle = format!(
        "{} x {} | proxy on CPU {} with {} worker | load + upstream on CPU {}",
        results.machine.nproc,
        results.machine.cpu_model,
        results.settings.proxy_cpus,
        results.settings.proxy_workers,
        results.settings.load_cpus
    );
    let (title_area, body) = root.split_vertically(60);
    title_area
        .titled(
            "Ordo enforcer vs direct, nginx, nginx + ModSecurity/CRS (loopback, banking mix)",
            ("sans-serif", 26),
        )
        .map_err(err)?
        .draw(&Text::new(
            subtitle,
            (20, 36),
            ("sans-serif", 16).into_font().color(&BLACK.mix(0.7)),
        ))
        .map_err(err)?;
    let (left, right) = body.split_horizontally(880);
    draw_throughput(results, &left)?;
    draw_latency(results, &right)?;
    root.present().map_err(err)?;
    Ok(())
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("chart: {e:?}")
}

fn target_names(results: &Results) -> Vec<String> {
    results.targets.iter().map(|t| t.name.clone()).collect()
}

fn draw_throughput<DB: DrawingBackend>(
    results: &Results,
    area: &DrawingArea<DB, plotters::coord::Shift>,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let names = target_names(results);
    let levels = &results.settings.concurrency;
    // One bar per target and level: the run the tables show, not every round.
    let medians = crate::rounds::median_runs(&results.throughput);
    let max = medians.iter().map(|r| r.rps).fold(0.0, f64::max).max(1.0) * 1.15;
    let n = names.len().max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Throughput, closed loop (wrk), median run, req/s",
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..(n - 0.5), 0f64..max)
        .map_err(err)?;
    let label_names = names.clone();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(names.len().max(1))
        .x_label_formatter(&move |x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                label_names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| format!("{:.0}k", y / 1000.0))
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(err)?;
    let width = 0.8 / levels.len().max(1) as f64;
    for (j, level) in levels.iter().enumerate() {
        let color = PALETTE[j % PALETTE.len()];
        let bars: Vec<Rectangle<(f64, f64)>> = names
            .iter()
            .enumerate()
            .filter_map(|(i, name)| {
                let row = medians
                    .iter()
                    .find(|r| &r.target == name && r.concurrency == *level)?;
                let x0 = i as f64 - 0.4 + j as f64 * width;
                Some(Rectangle::new(
                    [(x0, 0.0), (x0 + width * 0.92, row.rps)],
                    color.filled(),
                ))
            })
            .collect();
        chart
            .draw_series(bars)
            .map_err(err)?
            .label(format!("{level} connections"))
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
    }
    // The nginx ratio above each target's best bar.
    for (i, s) in results.summary.iter().enumerate() {
        let Some(pos) = names.iter().position(|n| n == &s.target) else {
            continue;
        };
        let _ = i;
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{:.2}x nginx", s.ratio_to_nginx),
                (pos as f64 - 0.3, s.max_rps + max * 0.03),
                ("sans-serif", 15).into_font(),
            )))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 15))
        .draw()
        .map_err(err)?;
    Ok(())
}

fn draw_latency<DB: DrawingBackend>(
    results: &Results,
    area: &DrawingArea<DB, plotters::coord::Shift>,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let Some(fixed) = &results.fixed_rate else {
        area.titled("no fixed-rate run", ("sans-serif", 20))
            .map_err(err)?;
        return Ok(());
    };
    let names: Vec<String> = fixed.rows.iter().map(|r| r.target.clone()).collect();
    let n = names.len().max(1) as f64;
    let max_ms = fixed
        .rows
        .iter()
        .map(|r| r.p999_us as f64 / 1000.0)
        .fold(0.0, f64::max)
        .max(1.0)
        * 2.0;
    let min_ms = 0.01;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!(
                "Latency at {:.0} req/s (open loop), ms, log scale",
                fixed.rate
            ),
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..(n - 0.5), (min_ms..max_ms).log_scale())
        .map_err(err)?;
    let label_names = names.clone();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(names.len().max(1))
        .x_label_formatter(&move |x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                label_names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| {
            if *y >= 1.0 {
                format!("{y:.0}")
            } else {
                format!("{y:.2}")
            }
        })
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    type Pick = fn(&crate::results::FixedRateRow) -> u64;
    let series: [(&str, Pick); 3] = [
        ("p50", |r| r.p50_us),
        ("p99", |r| r.p99_us),
        ("p99.9", |r| r.p999_us),
    ];
    let width = 0.8 / series.len() as f64;
    for (j, (label, get)) in series.iter().enumerate() {
        let color = PALETTE[j % PALETTE.len()];
        let bars: Vec<Rectangle<(f64, f64)>> = fixed
            .rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let x0 = i as f64 - 0.4 + j as f64 * width;
                let v = (get(r) as f64 / 1000.0).max(min_ms);
                Rectangle::new([(x0, min_ms), (x0 + width * 0.92, v)], color.filled())
            })
            .collect();
        chart
            .draw_series(bars)
            .map_err(err)?
            .label(*label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 15))
        .draw()
        .map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{FixedRate, FixedRateRow, TargetInfo, ThroughputRow};

    #[test]
    fn a_png_is_written() {
        if !FONT_PATHS.iter().any(|p| Path::new(p).exists()) {
            panic!("install fonts-dejavu-core: the chart needs a TrueType font");
        }
        let names = ["direct", "nginx", "ordo-enforce"];
        let mut r = Results {
            targets: names
                .iter()
                .map(|n| TargetInfo {
                    name: (*n).into(),
                    description: String::new(),
                })
                .collect(),
            ..Default::default()
        };
        r.settings.concurrency = vec![16, 64];
        for (i, n) in names.iter().enumerate() {
            for c in [16, 64] {
                r.throughput.push(ThroughputRow {
                    target: (*n).into(),
                    concurrency: c,
                    rps: 1000.0 * (i + 1) as f64 + c as f64,
                    ..Default::default()
                });
            }
        }
        r.fixed_rate = Some(FixedRate {
            rate: 500.0,
            basis: String::new(),
            rows: names
                .iter()
                .map(|n| FixedRateRow {
                    target: (*n).into(),
                    p50_us: 100,
                    p99_us: 900,
                    p999_us: 4000,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        });
        r.summarise();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.png");
        draw(&r, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        assert!(bytes.len() > 10_000);
    }
}
