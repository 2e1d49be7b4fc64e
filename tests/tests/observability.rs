//! The Grafana dashboard and the Prometheus alert rules in deploy/observability/ refer
//! only to metrics, and labels of them, that a real inference server exports.

use std::collections::{BTreeMap, BTreeSet};

use e2e::{get, post, repo_root, spin_pass_skips_edgeless_test, start_inference_with, tiny_model};
use serde_json::{Value, json};

/// Labels Prometheus itself adds or histograms carry.
const STANDARD_LABELS: [&str; 3] = ["instance", "job", "le"];

/// Each metric family the server exports, with its type and the labels seen on it.
fn exported(server: &str) -> BTreeMap<String, (String, BTreeSet<String>)> {
    let text = String::from_utf8(get(&format!("{server}/metrics")).body).unwrap();
    let mut families: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            families.insert(name.to_string(), (kind.to_string(), BTreeSet::new()));
        } else if !line.starts_with('#') && line.contains('{') {
            let (name, rest) = line.split_once('{').unwrap();
            let base = family_of(name, &families);
            let labels = rest.split('}').next().unwrap();
            for pair in labels.split(',') {
                if let Some((key, _)) = pair.split_once('=')
                    && let Some(f) = families.get_mut(&base)
                {
                    f.1.insert(key.trim().to_string());
                }
            }
        }
    }
    families
}

/// A sample or reference name's family: histograms' `_bucket`, `_sum` and `_count` series
/// belong to the histogram.
fn family_of(name: &str, families: &BTreeMap<String, (String, BTreeSet<String>)>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && families
                .get(base)
                .is_some_and(|(kind, _)| kind == "histogram")
        {
            return base.to_string();
        }
    }
    name.to_string()
}

/// Every `sdgate_*` metric a PromQL text names, with the label keys its selector
/// matches on, and the `by (...)` / `without (...)` labels of the text.
fn references(promql: &str) -> (Vec<(String, Vec<String>)>, Vec<String>) {
    let mut metrics = Vec::new();
    let mut rest = promql;
    while let Some(i) = rest.find("sdgate_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = tail[..end].to_string();
        let mut keys = Vec::new();
        if tail[end..].starts_with('{') {
            let selector = tail[end + 1..].split('}').next().unwrap();
            for m in selector.split(',') {
                let key: String = m
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !key.is_empty() {
                    keys.push(key);
                }
            }
        }
        metrics.push((name, keys));
        rest = &tail[end..];
    }
    let mut grouping = Vec::new();
    for word in ["by (", "by(", "without (", "without("] {
        let mut rest = promql;
        while let Some(i) = rest.find(word) {
            let inner = rest[i + word.len()..].split(')').next().unwrap();
            grouping.extend(inner.split(',').map(|k| k.trim().to_string()));
            rest = &rest[i + word.len()..];
        }
    }
    (metrics, grouping)
}

#[test]
fn dashboards_and_alerts_use_only_exported_metrics() {
    if spin_pass_skips_edgeless_test() {
        return;
    }
    let (_server, server) = start_inference_with(&["--model", tiny_model().to_str().unwrap()]);
    // One image and one refusal, so the labelled series exist.
    let ok = json!({"model": "", "prompt": "a cat", "width": 64, "height": 64, "steps": 1,
        "seed": 1, "samples": 1});
    let reply = post(
        &format!("{server}/v1/generate"),
        &[("Content-Type", "application/json")],
        &ok.to_string(),
    );
    assert_eq!(reply.status, 200);
    let bad = json!({"model": "", "prompt": "a cat", "width": 65, "samples": 1});
    let reply = post(
        &format!("{server}/v1/generate"),
        &[("Content-Type", "application/json")],
        &bad.to_string(),
    );
    assert_eq!(reply.status, 400);
    let families = exported(&server);
    assert!(
        families.contains_key("sdgate_stage_seconds"),
        "{families:?}"
    );

    let dir = repo_root().join("deploy/observability");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("grafana-dashboard.json")).unwrap())
            .expect("the dashboard is JSON");
    let mut texts: Vec<(String, String)> = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let targets = panel["targets"].as_array().expect("each panel has targets");
        assert!(!targets.is_empty(), "{}", panel["title"]);
        for t in targets {
            texts.push((
                format!("dashboard panel {}", panel["title"]),
                t["expr"].as_str().expect("a PromQL expr").to_string(),
            ));
        }
    }
    let rules = std::fs::read_to_string(dir.join("alerts.yaml")).unwrap();
    let alerts = rules.matches("- alert:").count();
    assert!(alerts >= 4, "queue, errors, no model, slow p95");
    assert_eq!(rules.matches("expr:").count(), alerts, "one expr per alert");
    texts.push(("alerts.yaml".into(), rules));

    let mut checked = 0;
    for (place, text) in &texts {
        let (metrics, grouping) = references(text);
        let mut labels_here = BTreeSet::new();
        for (name, keys) in metrics {
            let family = family_of(&name, &families);
            let (_, labels) = families
                .get(&family)
                .unwrap_or_else(|| panic!("{place}: {name} is not a metric the server exports"));
            for key in keys {
                assert!(
                    labels.contains(&key) || STANDARD_LABELS.contains(&key.as_str()),
                    "{place}: {name} has no label {key} (it has {labels:?})"
                );
            }
            labels_here.extend(labels.iter().cloned());
            checked += 1;
        }
        for key in grouping {
            assert!(
                labels_here.contains(&key) || STANDARD_LABELS.contains(&key.as_str()),
                "{place}: grouping by {key}, which none of its metrics has"
            );
        }
    }
    assert!(checked >= 15, "{checked} references checked");
}
