//! The rate-over-time chart (SVG) of the runs.

use std::fmt::Write as _;

use super::result::RunResult;

const W: f64 = 900.0;
const H: f64 = 420.0;
const LEFT: f64 = 80.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLORS: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#17becf",
];

/// The rate over time of one run per contender (its median repetition), as an SVG.
pub(super) fn chart(runs: &[&RunResult]) -> String {
    const RIGHT: f64 = 230.0;
    let rates: Vec<Vec<(f64, f64)>> = runs.iter().map(|r| rate_series(&r.series)).collect();
    let max_t = runs
        .iter()
        .map(|r| r.seconds)
        .fold(0.0f64, f64::max)
        .max(0.001);
    let max_rate = rates
        .iter()
        .flatten()
        .map(|p| p.1)
        .fold(0.0f64, f64::max)
        .max(1.0);
    let (step_r, max_r) = nice_axis(max_rate);
    let (step_t, max_t) = nice_axis(max_t);
    let x = |t: f64| LEFT + (W - LEFT - RIGHT) * t / max_t;
    let y = |r: f64| H - BOTTOM - (H - TOP - BOTTOM) * r / max_r;
    let mut svg =
        open_svg("jobstream bench: drain rate over time (events/s into Kafka; ceiling: average)");
    let mut r = 0.0;
    while r <= max_r + 1e-9 {
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - RIGHT,
            y(r),
            y(r),
            LEFT - 6.0,
            y(r) + 4.0,
            human(r)
        );
        r += step_r;
    }
    let mut t = 0.0;
    while t <= max_t + 1e-9 {
        let _ = writeln!(
            svg,
            r##"<line x1="{:.1}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            x(t),
            x(t),
            TOP,
            H - BOTTOM,
            x(t),
            H - BOTTOM + 16.0,
            format_seconds(t)
        );
        t += step_t;
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">seconds since the contender started</text>"#,
        LEFT + (W - LEFT - RIGHT) / 2.0,
        H - 12.0
    );
    for (i, (run, points)) in runs.iter().zip(&rates).enumerate() {
        let pixels: Vec<(f64, f64)> = points.iter().map(|(t, r)| (x(*t), y(*r))).collect();
        let label = format!("{} ({})", run.contender, human(run.events_per_sec));
        draw_series(&mut svg, i, &pixels, W - RIGHT, &label);
    }
    svg.push_str("</svg>\n");
    svg
}

/// The latency distribution of one run per contender (its median-p99 repetition), as an SVG:
/// the share of records (y) that reached Kafka within x milliseconds, x on a log scale so
/// that the median and the tail both show.
pub(super) fn latency_chart(runs: &[&RunResult]) -> String {
    const RIGHT: f64 = 260.0;
    let max_ms = runs
        .iter()
        .filter_map(|r| r.latency_max_ms)
        .fold(1.0f64, f64::max);
    // Decades from 0.1 ms to past the slowest record.
    let low = -1.0f64;
    let high = max_ms.max(1.0).log10().ceil().max(low + 1.0);
    let x = |ms: f64| LEFT + (W - LEFT - RIGHT) * (ms.max(0.1).log10() - low) / (high - low);
    let y = |share: f64| H - BOTTOM - (H - TOP - BOTTOM) * share;
    let mut svg =
        open_svg("jobstream bench: publish → Kafka latency per record (share within x ms)");
    for tenth in 0..=10 {
        let share = f64::from(tenth) / 10.0;
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}%</text>"##,
            W - RIGHT,
            y(share),
            y(share),
            LEFT - 6.0,
            y(share) + 4.0,
            tenth * 10
        );
    }
    let mut decade = low;
    while decade <= high + 1e-9 {
        let ms = 10f64.powf(decade);
        let _ = writeln!(
            svg,
            r##"<line x1="{:.1}" x2="{:.1}" y1="{TOP}" y2="{:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            x(ms),
            x(ms),
            H - BOTTOM,
            x(ms),
            H - BOTTOM + 16.0,
            if ms < 1.0 {
                format!("{ms:.1}")
            } else {
                format!("{ms:.0}")
            }
        );
        decade += 1.0;
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">milliseconds from publish to Kafka's append (log scale)</text>"#,
        LEFT + (W - LEFT - RIGHT) / 2.0,
        H - 12.0
    );
    for (i, run) in runs.iter().enumerate() {
        let pixels: Vec<(f64, f64)> = run
            .latency_quantiles
            .iter()
            .map(|(q, ms)| (x(*ms), y(*q)))
            .collect();
        let label = format!(
            "{} (p99 {:.1} ms)",
            run.contender,
            run.latency_p99_ms.unwrap_or(f64::NAN)
        );
        draw_series(&mut svg, i, &pixels, W - RIGHT, &label);
    }
    svg.push_str("</svg>\n");
    svg
}

/// A chart's SVG element, white background and title.
fn open_svg(title: &str) -> String {
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="22" font-size="15">{}</text>"#,
        xml_escape(title)
    );
    svg
}

/// The `index`-th series: its line through `pixels`, and its legend entry right of the plot.
fn draw_series(svg: &mut String, index: usize, pixels: &[(f64, f64)], legend_x: f64, label: &str) {
    let color = COLORS[index % COLORS.len()];
    let path: Vec<String> = pixels
        .iter()
        .map(|(x, y)| format!("{x:.1},{y:.1}"))
        .collect();
    let _ = writeln!(
        svg,
        r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
        path.join(" ")
    );
    let ly = TOP + 10.0 + 18.0 * index as f64;
    let _ = writeln!(
        svg,
        r#"<line x1="{:.1}" x2="{:.1}" y1="{ly:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
        legend_x + 12.0,
        legend_x + 32.0,
        legend_x + 38.0,
        ly + 4.0,
        xml_escape(label)
    );
}

/// Events/s over windows of about 200 ms from cumulative (t, count) samples.
pub(super) fn rate_series(series: &[(f64, u64)]) -> Vec<(f64, f64)> {
    if series.len() == 2 && series[0].1 == 0 {
        // Only start and end are known (the ceiling): its average rate.
        let (t, n) = series[1];
        let rate = n as f64 / t.max(1e-9);
        return vec![(0.0, rate), (t, rate)];
    }
    let mut out = vec![(0.0, 0.0)];
    let mut last = (0.0, 0u64);
    for &(t, count) in series {
        if t - last.0 >= 0.2 {
            let rate = (count.saturating_sub(last.1)) as f64 / (t - last.0);
            out.push(((t + last.0) / 2.0, rate));
            last = (t, count);
        }
    }
    out
}

pub(super) fn nice_axis(max: f64) -> (f64, f64) {
    let raw = max / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(raw);
    (step, (max / step).ceil() * step)
}

pub(super) fn human(value: f64) -> String {
    if value >= 1e6 {
        format!("{:.2}M", value / 1e6)
    } else if value >= 1e3 {
        format!("{:.1}k", value / 1e3)
    } else {
        format!("{value:.0}")
    }
}

pub(super) fn format_seconds(t: f64) -> String {
    if t.fract().abs() < 1e-9 {
        format!("{t:.0}")
    } else {
        format!("{t:.2}")
    }
}

pub(super) fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_end_on_a_round_value_and_rates_come_from_the_counts() {
        assert_eq!(nice_axis(9.0), (2.0, 10.0));
        let rates = rate_series(&[(0.0, 0), (0.5, 1000)]);
        assert_eq!(rates, vec![(0.0, 2000.0), (0.5, 2000.0)]);
    }

    #[test]
    fn the_latency_chart_draws_one_line_and_one_legend_entry_per_run() {
        let run = |name: &str, p99: f64| RunResult {
            contender: name.to_owned(),
            latency_p99_ms: Some(p99),
            latency_max_ms: Some(40.0),
            latency_quantiles: vec![(0.0, 1.0), (0.5, 8.0), (0.99, p99), (1.0, 40.0)],
            ..RunResult::default()
        };
        let (a, b) = (run("jobstream", 26.5), run("a <pipe> & b", 8.6));
        let svg = latency_chart(&[&a, &b]);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("jobstream (p99 26.5 ms)"));
        assert!(svg.contains("a &lt;pipe&gt; &amp; b (p99 8.6 ms)"));
    }
}
