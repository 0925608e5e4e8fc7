//! The benchmark report: criterion's medians, paired with each case's peers, as ratios.
//!
//! Bench ids follow one convention: the criterion *group* is the case
//! (`mutex_uncontended`), the *function* is the implementation (`conc`, `tokio`,
//! `async-lock`, …), and an optional *parameter* is the load (`4 tasks`). A row compares
//! conc's median with one peer's: `ratio = conc / peer`, so below 1 means conc is faster.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

/// One measured benchmark.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    /// The case (criterion group).
    pub group: String,
    /// The implementation (criterion function).
    pub function: String,
    /// The load (criterion parameter), empty when none.
    pub parameter: String,
    /// Median time per iteration, in nanoseconds.
    pub median_ns: f64,
}

/// A goal from the issues: conc's time at most `max_ratio` times the peer's, and (when
/// set) at most `max_overhead_ns` above it.
#[derive(Debug, Clone, Copy)]
pub struct Goal {
    /// The case (criterion group).
    pub group: &'static str,
    /// The peer the goal names.
    pub peer: &'static str,
    /// The largest acceptable `conc / peer` ratio.
    pub max_ratio: f64,
    /// The largest acceptable `conc - peer`, in nanoseconds.
    pub max_overhead_ns: f64,
    /// The largest acceptable time of conc's own, in nanoseconds (the peer's row shows
    /// what the same work costs without conc).
    pub max_ns: f64,
    /// The goal as the issue words it.
    pub text: &'static str,
}

const fn ratio(
    group: &'static str,
    peer: &'static str,
    max_ratio: f64,
    text: &'static str,
) -> Goal {
    Goal {
        group,
        peer,
        max_ratio,
        max_overhead_ns: f64::INFINITY,
        max_ns: f64::INFINITY,
        text,
    }
}

const fn overhead(
    group: &'static str,
    peer: &'static str,
    max_overhead_ns: f64,
    text: &'static str,
) -> Goal {
    Goal {
        group,
        peer,
        max_ratio: f64::INFINITY,
        max_overhead_ns,
        max_ns: f64::INFINITY,
        text,
    }
}

const fn absolute(
    group: &'static str,
    peer: &'static str,
    max_ns: f64,
    text: &'static str,
) -> Goal {
    Goal {
        group,
        peer,
        max_ratio: f64::INFINITY,
        max_overhead_ns: f64::INFINITY,
        max_ns,
        text,
    }
}

/// The goals the crate issues set.
pub const GOALS: &[Goal] = &[
    ratio("mutex_uncontended", "tokio", 1.0, "faster than tokio"),
    ratio(
        "mutex_uncontended",
        "async-lock",
        0.9,
        "at most 0.9x async-lock",
    ),
    ratio(
        "mutex_uncontended",
        "parking_lot",
        1.1,
        "at most 1.1x parking_lot",
    ),
    ratio(
        "mutex_handoff",
        "tokio",
        0.5,
        "at most 0.5x tokio per hand-off",
    ),
    ratio(
        "mutex_handoff",
        "async-lock",
        1.0,
        "at most async-lock's time (not FIFO: its releasing task takes the lock back, no task switch)",
    ),
    ratio(
        "mutex_handoff",
        "yield_now",
        1.2,
        "within 1.2x of a task switch, the floor of any FIFO hand-off",
    ),
    ratio(
        "mutex_handoff_2_threads",
        "tokio",
        0.75,
        "at most 0.75x tokio per hand-off on 2 threads",
    ),
    ratio(
        "mutex_contended",
        "tokio",
        1.0,
        "at least tokio's throughput",
    ),
    ratio(
        "sequence_next_is_current",
        "atomic",
        2.0,
        "within 2x of AtomicU64",
    ),
    ratio(
        "channel_throughput",
        "tokio-mpsc",
        1.05,
        "within 5% of tokio mpsc",
    ),
    ratio(
        "registry_1_caller",
        "async_singleflight",
        0.25,
        "at most 0.25x async_singleflight",
    ),
    ratio(
        "registry_100_callers",
        "async_singleflight",
        0.5,
        "at most 0.5x async_singleflight",
    ),
    ratio("retry_success_path", "backon", 1.0, "at most backon's time"),
    ratio(
        "breaker_tower_closed_path",
        "tower-resilience",
        1.0,
        "at most tower-resilience's breaker layer",
    ),
    ratio(
        "breaker_closed_path",
        "failsafe",
        1.0,
        "at most failsafe's closed path",
    ),
    ratio(
        "lock_server_acquire_release",
        "rslock",
        1.1,
        "at most 1.1x rslock's pair (Redlock on one instance: no fence, no metadata)",
    ),
    ratio(
        "lock_server_acquire_release",
        "distributed-lock-redis",
        1.1,
        "at most 1.1x distributed-lock-redis's pair (no fence)",
    ),
    absolute(
        "redis_server_time",
        "raw-redis",
        12_000.0,
        "at most 12 µs a pair inside Redis 7.0 (the raw pair's time beside it)",
    ),
    ratio(
        "retry_tower_success_path",
        "tower-resilience",
        1.0,
        "at most tower-resilience's retry layer",
    ),
    ratio(
        "abort_child_cancel",
        "tokio-util",
        1.0,
        "at most tokio-util's child token",
    ),
    ratio(
        "lock_server_acquire_release",
        "distributed-lock-postgres",
        1.0,
        "at most distributed-lock-postgres's pair (advisory locks: no TTL, fence or metadata)",
    ),
    ratio(
        "lock_server_acquire_release",
        "pg-advisory-lock",
        1.0,
        "at most an advisory lock pair (which has no TTL, fence or metadata)",
    ),
    overhead(
        "retry_success_path",
        "direct",
        50.0,
        "under 50 ns of overhead",
    ),
    overhead(
        "breaker_closed_path",
        "direct",
        50.0,
        "under 50 ns of overhead",
    ),
    ratio("spawn_100", "tokio", 1.5, "at most 1.5x a bare tokio spawn"),
    ratio(
        "lock_acquire_release",
        "parking_lot-hashmap",
        2.0,
        "at most 2x the floor (>= 4 M pairs/s)",
    ),
    ratio(
        "lock_acquire_release",
        "raw-rusqlite",
        1.3,
        "within 1.3x of raw INSERT+DELETE",
    ),
    ratio(
        "lock_server_acquire_release",
        "raw-tokio-postgres",
        1.3,
        "within 1.3x of raw statements",
    ),
    ratio(
        "lock_server_acquire_release",
        "raw-redis",
        1.2,
        "within 1.2x of raw commands",
    ),
    ratio(
        "lock_server_acquire_release",
        "raw-etcd-client",
        1.0,
        "at most a hand-written etcd-client lock pair",
    ),
    ratio(
        GROWTH_GROUP,
        GROWTH_FROM,
        1.5,
        "flat: 10^6 keys within 1.5x of 10^3",
    ),
];

/// A criterion filter (a regular expression) that runs every case a goal names, and
/// nothing else: `cargo xtask bench --goals`.
pub fn goal_filter() -> String {
    let mut groups: Vec<&str> = GOALS.iter().map(|g| g.group).collect();
    groups.sort_unstable();
    groups.dedup();
    format!("^({})/", groups.join("|"))
}

/// The case whose goal compares a backend with itself at two loads: an acquire+release
/// pair with 10^6 live keys against the same with 10^3 (the "peer" of the row).
const GROWTH_GROUP: &str = "lock_live_keys";
const GROWTH_FROM: &str = "1000 keys";
const GROWTH_TO: &str = "1000000 keys";

/// Reads every `new/estimates.json` (with its `benchmark.json`) under `criterion_dir`.
pub fn read_measurements(criterion_dir: &Path) -> Vec<Measurement> {
    let mut found = Vec::new();
    walk(criterion_dir, &mut found);
    found.sort_by(|a, b| {
        (&a.group, &a.parameter, &a.function).cmp(&(&b.group, &b.parameter, &b.function))
    });
    found
}

fn walk(dir: &Path, out: &mut Vec<Measurement>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        if entry.file_name() == "new" {
            if let Some(m) = read_one(&path) {
                out.push(m);
            }
        } else if entry.file_name() != "report" {
            walk(&path, out);
        }
    }
}

fn read_one(new_dir: &Path) -> Option<Measurement> {
    let read = |name: &str| -> Option<serde_json::Value> {
        serde_json::from_str(&fs::read_to_string(new_dir.join(name)).ok()?).ok()
    };
    let bench = read("benchmark.json")?;
    let estimates = read("estimates.json")?;
    let text = |key: &str| {
        bench
            .get(key)
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
    };
    Some(Measurement {
        group: text("group_id")?,
        function: text("function_id").unwrap_or_default(),
        parameter: text("value_str").unwrap_or_default(),
        median_ns: estimates.get("median")?.get("point_estimate")?.as_f64()?,
    })
}

/// One row of the report.
#[derive(Debug, Clone)]
pub struct Row {
    /// Case and load.
    pub case: String,
    /// The peer compared with.
    pub peer: String,
    /// conc's median (ns).
    pub conc_ns: f64,
    /// The peer's median (ns).
    pub peer_ns: f64,
    /// The goal, if an issue sets one.
    pub goal: Option<Goal>,
}

impl Row {
    /// `conc / peer`: below 1 means conc is faster.
    pub fn ratio(&self) -> f64 {
        self.conc_ns / self.peer_ns
    }

    /// `Some(true)` when the goal is met, `None` without a goal.
    pub fn verdict(&self) -> Option<bool> {
        self.goal.map(|g| {
            self.ratio() <= g.max_ratio
                && self.conc_ns - self.peer_ns <= g.max_overhead_ns
                && self.conc_ns <= g.max_ns
        })
    }
}

/// Pairs conc's measurement in each case with every peer's.
pub fn rows(measurements: &[Measurement]) -> Vec<Row> {
    let mut cases: BTreeMap<(String, String), Vec<&Measurement>> = BTreeMap::new();
    for m in measurements {
        cases
            .entry((m.group.clone(), m.parameter.clone()))
            .or_default()
            .push(m);
    }
    let mut rows = Vec::new();
    // Growth rows: each backend at 10^6 keys against itself at 10^3.
    let growth = |parameter: &'static str| {
        measurements
            .iter()
            .filter(move |m| m.group == GROWTH_GROUP && m.parameter == parameter)
    };
    for big in growth(GROWTH_TO) {
        if let Some(small) = growth(GROWTH_FROM).find(|m| m.function == big.function) {
            rows.push(Row {
                case: format!("{GROWTH_GROUP} ({}, 10^6 keys)", big.function),
                peer: GROWTH_FROM.to_owned(),
                conc_ns: big.median_ns,
                peer_ns: small.median_ns,
                goal: GOALS.iter().copied().find(|g| g.group == GROWTH_GROUP),
            });
        }
    }
    // conc's own cases are `conc`, and `conc <setting>` for conc in another mode (such as
    // `conc durability=guard`): each is compared with every peer of its case.
    let is_conc = |function: &str| function == "conc" || function.starts_with("conc ");
    for ((group, parameter), ms) in cases {
        for (conc, peer) in ms.iter().filter(|m| is_conc(&m.function)).flat_map(|conc| {
            ms.iter()
                .filter(|m| !is_conc(&m.function))
                .map(move |peer| (conc, peer))
        }) {
            let mode = conc.function.strip_prefix("conc ").unwrap_or("");
            let label: Vec<&str> = [parameter.as_str(), mode]
                .into_iter()
                .filter(|part| !part.is_empty())
                .collect();
            let case = if label.is_empty() {
                group.clone()
            } else {
                format!("{group} ({})", label.join(", "))
            };
            rows.push(Row {
                case,
                peer: peer.function.clone(),
                conc_ns: conc.median_ns,
                peer_ns: peer.median_ns,
                goal: GOALS
                    .iter()
                    .copied()
                    .find(|g| g.group == group && g.peer == peer.function),
            });
        }
    }
    rows
}

fn format_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}

/// The Markdown report.
pub fn markdown(rows: &[Row], machine: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# conc benchmark report\n\nMachine: {machine}\n");
    let _ = writeln!(
        out,
        "Ratio = conc's median / the peer's median (below 1: conc is faster).\n"
    );
    let _ = writeln!(
        out,
        "| case | peer | conc | peer time | ratio | goal | verdict |"
    );
    let _ = writeln!(out, "| --- | --- | ---: | ---: | ---: | --- | --- |");
    for row in rows {
        let (goal, verdict) = match (row.goal, row.verdict()) {
            (Some(goal), Some(true)) => (goal.text, "met"),
            (Some(goal), _) => (goal.text, "NOT MET"),
            _ => ("", ""),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.2} | {} | {} |",
            row.case,
            row.peer,
            format_ns(row.conc_ns),
            format_ns(row.peer_ns),
            row.ratio(),
            goal,
            verdict
        );
    }
    out
}

/// A horizontal bar chart of the ratios, as SVG, with the parity line at 1.
pub fn svg_chart(rows: &[Row]) -> String {
    let bar_h = 18.0;
    let label_w = 380.0;
    let plot_w = 420.0;
    let height = 40.0 + bar_h * rows.len() as f64 + 30.0;
    let max_ratio = rows
        .iter()
        .map(Row::ratio)
        .fold(2.0_f64, f64::max)
        .min(10.0);
    let scale = plot_w / max_ratio;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{height}" font-family="sans-serif" font-size="12">"#,
        label_w + plot_w + 60.0
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="10" y="20" font-size="14">conc / peer (median time; below 1 is faster)</text>"#
    );
    for (i, row) in rows.iter().enumerate() {
        let y = 35.0 + bar_h * i as f64;
        let ratio = row.ratio().min(max_ratio);
        let color = match row.verdict() {
            Some(false) => "#d9534f",
            _ if row.ratio() <= 1.0 => "#5cb85c",
            _ => "#f0ad4e",
        };
        let label = xml_escape(&format!("{} vs {}", row.case, row.peer));
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">{label}</text>"#,
            label_w - 6.0,
            y + 13.0
        );
        let _ = writeln!(
            svg,
            r#"<rect x="{label_w}" y="{}" width="{:.1}" height="{}" fill="{color}"/>"#,
            y + 2.0,
            ratio * scale,
            bar_h - 4.0
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{}">{:.2}</text>"#,
            label_w + ratio * scale + 4.0,
            y + 13.0,
            row.ratio()
        );
    }
    let x1 = label_w + scale;
    let _ = writeln!(
        svg,
        r#"<line x1="{x1}" y1="30" x2="{x1}" y2="{}" stroke="black" stroke-dasharray="4"/>"#,
        height - 20.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="{x1}" y="{}" text-anchor="middle">1.0</text>"#,
        height - 6.0
    );
    svg.push_str("</svg>\n");
    svg
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Writes `report.md` and `ratios.svg` (the chart, with labels) into `out_dir`, returning
/// the rows.
pub fn write(
    criterion_dir: &Path,
    out_dir: &Path,
    machine: &str,
) -> std::io::Result<(Vec<Row>, PathBuf)> {
    let rows = rows(&read_measurements(criterion_dir));
    fs::create_dir_all(out_dir)?;
    let report = out_dir.join("report.md");
    fs::write(&report, markdown(&rows, machine))?;
    fs::write(out_dir.join("ratios.svg"), svg_chart(&rows))?;
    let _ = fs::remove_file(out_dir.join("ratios.png"));
    Ok((rows, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_conc_with_its_peers_and_judges_goals() {
        let m = |function: &str, ns: f64| Measurement {
            group: "mutex_uncontended".into(),
            function: function.into(),
            parameter: String::new(),
            median_ns: ns,
        };
        let rows = rows(&[
            m("conc", 10.0),
            m("tokio", 20.0),
            m("async-lock", 5.0),
            m("parking_lot", 8.0),
        ]);
        assert_eq!(rows.len(), 3);
        let tokio = rows.iter().find(|r| r.peer == "tokio").unwrap();
        assert_eq!(tokio.ratio(), 0.5);
        assert_eq!(tokio.verdict(), Some(true));
        let async_lock = rows.iter().find(|r| r.peer == "async-lock").unwrap();
        assert_eq!(async_lock.verdict(), Some(false));
        let parking_lot = rows.iter().find(|r| r.peer == "parking_lot").unwrap();
        assert_eq!(parking_lot.verdict(), Some(false));
        // A case without a goal has no verdict.
        let other = rows_of(&[
            ("abort_check", "conc", "", 1.0),
            ("abort_check", "tokio-util", "", 2.0),
        ]);
        assert_eq!(other[0].verdict(), None);
        let md = markdown(&rows, "test");
        assert!(md.contains("NOT MET") && md.contains("| 0.50 |"));
        assert!(svg_chart(&rows).starts_with("<svg"));
    }

    #[test]
    fn the_goal_filter_names_every_goal_case() {
        let filter = goal_filter();
        assert!(filter.starts_with("^(") && filter.ends_with(")/"));
        for goal in GOALS {
            assert!(filter.contains(goal.group), "{}", goal.group);
        }
    }

    #[test]
    fn an_absolute_goal_judges_concs_own_time() {
        let rows = rows_of(&[
            ("redis_server_time", "conc", "", 11_000.0),
            ("redis_server_time", "raw-redis", "", 1_000.0),
        ]);
        assert_eq!(
            rows[0].verdict(),
            Some(true),
            "11 µs is within 12 µs, whatever the ratio"
        );
        let rows = rows_of(&[
            ("redis_server_time", "conc", "", 13_000.0),
            ("redis_server_time", "raw-redis", "", 12_500.0),
        ]);
        assert_eq!(rows[0].verdict(), Some(false), "13 µs is over 12 µs");
    }

    #[test]
    fn each_mode_of_conc_is_compared_with_every_peer() {
        let group = "lock_server_acquire_release";
        let rows = rows_of(&[
            (group, "conc", "postgres", 400.0),
            (group, "conc durability=guard", "postgres", 200.0),
            (group, "distributed-lock-postgres", "postgres", 250.0),
        ]);
        let cases: Vec<(&str, &str, f64)> = rows
            .iter()
            .map(|r| (r.case.as_str(), r.peer.as_str(), r.ratio()))
            .collect();
        assert_eq!(
            cases,
            [
                (
                    "lock_server_acquire_release (postgres)",
                    "distributed-lock-postgres",
                    1.6
                ),
                (
                    "lock_server_acquire_release (postgres, durability=guard)",
                    "distributed-lock-postgres",
                    0.8
                ),
            ]
        );
        assert_eq!(rows[0].verdict(), Some(false));
        assert_eq!(rows[1].verdict(), Some(true));
    }

    fn rows_of(ms: &[(&str, &str, &str, f64)]) -> Vec<Row> {
        rows(
            &ms.iter()
                .map(|&(group, function, parameter, median_ns)| Measurement {
                    group: group.into(),
                    function: function.into(),
                    parameter: parameter.into(),
                    median_ns,
                })
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn growth_rows_compare_a_backend_with_itself() {
        let rows = rows_of(&[
            ("lock_live_keys", "memory", "1000 keys", 200.0),
            ("lock_live_keys", "memory", "1000000 keys", 260.0),
            ("lock_live_keys", "sqlite", "1000 keys", 100.0),
            ("lock_live_keys", "sqlite", "1000000 keys", 200.0),
        ]);
        assert_eq!(rows.len(), 2);
        let memory = rows.iter().find(|r| r.case.contains("memory")).unwrap();
        assert_eq!(memory.peer, "1000 keys");
        assert_eq!(memory.verdict(), Some(true));
        let sqlite = rows.iter().find(|r| r.case.contains("sqlite")).unwrap();
        assert_eq!(sqlite.verdict(), Some(false));
    }

    #[test]
    fn reads_criterion_json() {
        let dir = std::env::temp_dir().join(format!("xtask-report-{}", std::process::id()));
        let new = dir.join("g").join("conc").join("new");
        fs::create_dir_all(&new).unwrap();
        fs::write(
            new.join("estimates.json"),
            r#"{"mean":{"point_estimate":12.5},"median":{"confidence_interval":{"lower_bound":1.0},"point_estimate":11.25,"standard_error":0.1}}"#,
        )
        .unwrap();
        fs::write(
            new.join("benchmark.json"),
            r#"{"group_id":"g \"quoted\"","function_id":"conc","value_str":null}"#,
        )
        .unwrap();
        let found = read_measurements(&dir);
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].group, "g \"quoted\"");
        assert_eq!(found[0].function, "conc");
        assert_eq!(found[0].parameter, "");
        assert_eq!(found[0].median_ns, 11.25);
    }
}
