//! Notifications per minute by outcome, drawn as an SVG bar chart on the server: one stacked bar
//! per minute, one colour (a CSS class, as the CSP allows no inline style) per outcome.

use std::collections::BTreeMap;

use chrono::{NaiveDateTime, Timelike};

/// How many minutes the chart shows, up to now.
pub const MINUTES: i64 = 180;

const BAR_WIDTH: i64 = 4;
const PLOT_HEIGHT: i64 = 140;
const LEFT: i64 = 40;
const TOP: i64 = 10;

/// One rectangle of a stacked bar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bar {
    pub x: i64,
    pub y: i64,
    pub width: i64,
    pub height: i64,
    pub class: String,
    /// The tooltip: minute, outcome and count.
    pub title: String,
}

/// A time label under the plot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tick {
    pub x: i64,
    pub label: String,
}

/// An outcome's colour and how many notifications it had in the chart's window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Legend {
    pub class: String,
    pub outcome: String,
    pub total: usize,
}

/// The chart, ready for the template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chart {
    pub width: i64,
    pub height: i64,
    pub plot_left: i64,
    pub plot_top: i64,
    pub plot_bottom: i64,
    pub plot_right: i64,
    /// The busiest minute's count, the top of the scale.
    pub max: usize,
    pub bars: Vec<Bar>,
    pub ticks: Vec<Tick>,
    pub legend: Vec<Legend>,
    pub total: usize,
}

/// The outcomes that have a colour of their own in the stylesheet; any other is grey.
const COLOURED: [&str; 13] = [
    "credited",
    "already_paid",
    "paid_by_other_trade",
    "closed",
    "refunded",
    "charged_back",
    "chargeback_reversed",
    "already_booked",
    "not_yet",
    "ignored",
    "mismatch",
    "unknown_order",
    "rejected",
];

fn class_of(outcome: &str) -> String {
    if COLOURED.contains(&outcome) {
        format!("o-{outcome}")
    } else {
        "o-other".to_owned()
    }
}

/// Draws `arrivals` (when each notification came, and what it came to) over the [`MINUTES`] up
/// to `now`.
pub fn draw(arrivals: &[(NaiveDateTime, String)], now: NaiveDateTime) -> Chart {
    let end = now
        .with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .unwrap_or(now)
        + chrono::Duration::minutes(1);
    let start = end - chrono::Duration::minutes(MINUTES);
    // minute index -> outcome -> count
    let mut minutes: BTreeMap<i64, BTreeMap<&str, usize>> = BTreeMap::new();
    let mut totals: BTreeMap<&str, usize> = BTreeMap::new();
    for (at, outcome) in arrivals {
        if *at < start || *at >= end {
            continue;
        }
        let minute = (*at - start).num_minutes();
        *minutes
            .entry(minute)
            .or_default()
            .entry(outcome.as_str())
            .or_default() += 1;
        *totals.entry(outcome.as_str()).or_default() += 1;
    }
    let max = minutes
        .values()
        .map(|m| m.values().sum::<usize>())
        .max()
        .unwrap_or(0);
    let scale = |n: usize| -> i64 {
        if max == 0 {
            0
        } else {
            ((n as i64) * PLOT_HEIGHT + max as i64 - 1) / max as i64
        }
    };
    let plot_bottom = TOP + PLOT_HEIGHT;
    let mut bars = Vec::new();
    for (minute, outcomes) in &minutes {
        let x = LEFT + minute * BAR_WIDTH;
        let mut below = 0;
        let at = start + chrono::Duration::minutes(*minute);
        for (outcome, n) in outcomes {
            let top = scale(below + n);
            let height = (top - scale(below)).max(1);
            bars.push(Bar {
                x,
                y: plot_bottom - top,
                width: BAR_WIDTH - 1,
                height,
                class: class_of(outcome),
                title: format!("{} {outcome}: {n}", at.format("%H:%M")),
            });
            below += n;
        }
    }
    let ticks = (0..=MINUTES)
        .step_by(30)
        .map(|minute| Tick {
            x: LEFT + minute * BAR_WIDTH,
            label: (start + chrono::Duration::minutes(minute))
                .format("%H:%M")
                .to_string(),
        })
        .collect();
    let legend = totals
        .iter()
        .map(|(outcome, total)| Legend {
            class: class_of(outcome),
            outcome: (*outcome).to_owned(),
            total: *total,
        })
        .collect();
    Chart {
        width: LEFT + MINUTES * BAR_WIDTH + 20,
        height: plot_bottom + 30,
        plot_left: LEFT,
        plot_top: TOP,
        plot_bottom,
        plot_right: LEFT + MINUTES * BAR_WIDTH,
        max,
        bars,
        ticks,
        legend,
        total: totals.values().sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(h: u32, m: u32, s: u32) -> NaiveDateTime {
        chrono::NaiveDate::from_ymd_opt(2026, 12, 3)
            .unwrap()
            .and_hms_opt(h, m, s)
            .unwrap()
    }

    #[test]
    fn each_minute_stacks_its_outcomes_and_the_busiest_fills_the_plot() {
        let arrivals = vec![
            (at(11, 58, 1), "credited".to_owned()),
            (at(11, 58, 30), "credited".to_owned()),
            (at(11, 58, 59), "rejected".to_owned()),
            (at(11, 59, 0), "<script>".to_owned()),
            // Too old to be drawn.
            (at(8, 0, 0), "credited".to_owned()),
        ];
        let chart = draw(&arrivals, at(12, 0, 10));
        assert_eq!(chart.max, 3);
        assert_eq!(chart.total, 4);
        let minute: Vec<&Bar> = chart
            .bars
            .iter()
            .filter(|b| b.title.starts_with("11:58"))
            .collect();
        assert_eq!(minute.len(), 2);
        let heights: i64 = minute.iter().map(|b| b.height).sum();
        assert_eq!(heights, PLOT_HEIGHT);
        assert_eq!(minute[0].y + minute[0].height, chart.plot_bottom);
        assert!(chart.bars.iter().any(|b| b.class == "o-other"));
        assert_eq!(chart.ticks.len(), 7);
    }

    #[test]
    fn an_empty_window_draws_no_bars() {
        let chart = draw(&[], at(12, 0, 0));
        assert!(chart.bars.is_empty());
        assert_eq!(chart.max, 0);
    }
}
