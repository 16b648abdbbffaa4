//! Prometheus histograms and counters of the API server's `/metrics`, read
//! between two scrapes: what a stretch of work added, with quantiles from the
//! bucket bounds (the only resolution a histogram has).

use anyhow::{Context as _, ensure};

/// One scrape of the API server's `/metrics` (text format).
pub fn scrape() -> anyhow::Result<String> {
    let out = super::kubectl()
        .args(["get", "--raw", "/metrics"])
        .output()
        .context("running kubectl get --raw /metrics")?;
    ensure!(
        out.status.success(),
        "kubectl get --raw /metrics: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One sample line: `name{label="value",...} value`.
struct Sample<'a> {
    name: &'a str,
    labels: Vec<(&'a str, String)>,
    value: f64,
}

impl Sample<'_> {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Carries every `(label, value)` of `want`.
    fn matches(&self, want: &[(&str, &str)]) -> bool {
        want.iter().all(|(k, v)| self.label(k) == Some(*v))
    }
}

fn parse_line(line: &str) -> Option<Sample<'_>> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.parse::<f64>().ok()?;
    let Some((name, rest)) = series.split_once('{') else {
        return Some(Sample {
            name: series,
            labels: Vec::new(),
            value,
        });
    };
    let body = rest.strip_suffix('}')?;
    let mut labels = Vec::new();
    let mut i = 0;
    while i < body.len() {
        let eq = body[i..].find("=\"")? + i;
        let key = body[i..eq].trim_start_matches(',');
        let mut j = eq + 2;
        let mut value = String::new();
        loop {
            let c = body[j..].chars().next()?;
            match c {
                '"' => break,
                '\\' => {
                    let escaped = body[j + 1..].chars().next()?;
                    value.push(if escaped == 'n' { '\n' } else { escaped });
                    j += 1 + escaped.len_utf8();
                }
                c => {
                    value.push(c);
                    j += c.len_utf8();
                }
            }
        }
        labels.push((key, value));
        i = j + 1;
    }
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The sum of counter `name` over every series carrying the labels `want`.
pub fn counter(metrics: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter_map(parse_line)
        .filter(|s| s.name == name && s.matches(want))
        .map(|s| s.value)
        // An empty sum is -0.0.
        .sum::<f64>()
        + 0.0
}

/// A cumulative histogram: `(upper bound, observations at or below it)`, ascending,
/// the last bound `+Inf`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    pub buckets: Vec<(f64, f64)>,
    pub count: f64,
    pub sum: f64,
}

impl Histogram {
    /// Histogram `name` (without `_bucket`), summed over every series carrying `want`.
    pub fn read(metrics: &str, name: &str, want: &[(&str, &str)]) -> Histogram {
        let bucket = format!("{name}_bucket");
        let count = format!("{name}_count");
        let sum = format!("{name}_sum");
        let mut h = Histogram::default();
        for s in metrics.lines().filter_map(parse_line) {
            if !s.matches(want) {
                continue;
            }
            if s.name == bucket {
                let Some(le) = s.label("le").and_then(|le| match le {
                    "+Inf" => Some(f64::INFINITY),
                    v => v.parse::<f64>().ok(),
                }) else {
                    continue;
                };
                match h.buckets.iter_mut().find(|(b, _)| *b == le) {
                    Some((_, n)) => *n += s.value,
                    None => h.buckets.push((le, s.value)),
                }
            } else if s.name == count {
                h.count += s.value;
            } else if s.name == sum {
                h.sum += s.value;
            }
        }
        h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        h
    }

    /// What was observed after `before` (a scrape of the same series earlier).
    pub fn since(&self, before: &Histogram) -> Histogram {
        let earlier = |le: f64| {
            before
                .buckets
                .iter()
                .find(|(b, _)| *b == le)
                .map_or(0.0, |(_, n)| *n)
        };
        Histogram {
            buckets: self
                .buckets
                .iter()
                .map(|(le, n)| (*le, (n - earlier(*le)).max(0.0)))
                .collect(),
            count: (self.count - before.count).max(0.0),
            sum: (self.sum - before.sum).max(0.0),
        }
    }

    /// The mean observation (exact: sum / count).
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0.0).then(|| self.sum / self.count)
    }

    /// The bucket the `q` quantile falls in, as `(lower, upper)` bounds: all a
    /// histogram knows for certain.
    pub fn quantile_bounds(&self, q: f64) -> Option<(f64, f64)> {
        let rank = q * self.count;
        let mut lower = 0.0;
        for (le, n) in &self.buckets {
            if *n >= rank && self.count > 0.0 {
                return Some((lower, *le));
            }
            lower = *le;
        }
        None
    }

    /// The `q` quantile interpolated linearly within its bucket, as Prometheus'
    /// `histogram_quantile` does (the upper bound of the last finite bucket
    /// when it falls in `+Inf`).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let rank = q * self.count;
        let mut lower = (0.0, 0.0);
        for (le, n) in &self.buckets {
            if *n >= rank && self.count > 0.0 {
                if le.is_infinite() {
                    return Some(lower.0);
                }
                let width = n - lower.1;
                let share = if width > 0.0 {
                    (rank - lower.1) / width
                } else {
                    1.0
                };
                return Some(lower.0 + (le - lower.0) * share);
            }
            lower = (*le, *n);
        }
        None
    }
}
