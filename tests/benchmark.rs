//! The benchmark example runs end to end: a tiny `chat-bench` run starts its replica
//! processes (including the one serving three endpoints, and the replica killed and
//! restarted every round), carries calls through every contender and writes the JSON
//! lines the README documents. It checks the plumbing and the balancer's zero-failure
//! promise, not performance: figures come from real runs of the example.

use std::{collections::BTreeSet, process::Command};

use serde_json::Value;

/// Runs a tiny `chat-bench` with its store and JSON lines in `dir`; returns its
/// stdout and the JSON rows.
fn run_bench(dir: &std::path::Path) -> (String, Vec<Value>) {
    let bench = chat_testkit::workspace_binary("examples/chat-bench");
    let json = dir.join("bench.jsonl");
    let output = Command::new(bench)
        .args(["--seed", "7", "--duration", "400ms", "--rounds", "2"])
        .args(["--concurrency", "2"])
        .args([
            "--scenarios",
            "steady-one-process,killed-replica,flaky-replica",
        ])
        .arg("--json")
        .arg(&json)
        .arg("--store-dir")
        .arg(dir)
        .output()
        .expect("run chat-bench");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "chat-bench failed:\n{stdout}\n{stderr}"
    );
    let text = std::fs::read_to_string(&json).expect("the JSON lines file");
    let rows = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect();
    (stdout, rows)
}

#[test]
fn chat_bench_runs_every_contender_and_writes_json_lines() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (stdout, rows) = run_bench(dir.path());
    assert!(stdout.contains("Targets (issue 6)"), "{stdout}");

    let cells: BTreeSet<(String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["scenario"].as_str().unwrap_or_default().to_owned(),
                r["contender"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let expected: BTreeSet<(String, String)> = [
        ("steady-one-process", "direct"),
        ("steady-one-process", "tonic-balance"),
        ("steady-one-process", "chat-lb"),
        ("steady-one-process", "chat-lb-single"),
        ("killed-replica", "direct"),
        ("killed-replica", "tonic-balance"),
        ("killed-replica", "chat-lb"),
        ("flaky-replica", "direct"),
        ("flaky-replica", "tonic-balance"),
        ("flaky-replica", "chat-lb"),
    ]
    .into_iter()
    .map(|(s, c)| (s.to_owned(), c.to_owned()))
    .collect();
    assert_eq!(
        cells, expected,
        "one row per scenario and contender that ran"
    );

    for row in &rows {
        for key in [
            "calls_per_sec",
            "p50_us",
            "p99_us",
            "p999_us",
            "failed",
            "ratio_to_direct",
            "client_cpu_us_per_call",
            "settings",
        ] {
            assert!(!row[key].is_null(), "{key} missing in {row}");
        }
        assert_eq!(row["seed"], 7, "{row}");
        assert_eq!(row["concurrency"], 2, "{row}");
        assert!(
            row["calls"].as_u64().unwrap_or(0) > 0,
            "no call succeeded: {row}"
        );
    }

    let find = |scenario: &str, contender: &str| {
        rows.iter()
            .find(|r| r["scenario"] == scenario && r["contender"] == contender)
            .expect("row")
    };
    let killed = find("killed-replica", "chat-lb");
    assert_eq!(
        killed["failed"], 0,
        "chat-lb failed calls while a replica was killed: {killed}"
    );
    let flaky = find("flaky-replica", "chat-lb");
    assert_eq!(
        flaky["failed"], 0,
        "chat-lb failed calls with a replica failing a fifth of chat calls: {flaky}"
    );
    let named = flaky["attempts_by_replica"].as_object();
    assert!(
        named.is_some_and(|m| ["A", "B", "C"].iter().all(|r| m.contains_key(*r))),
        "the healthy replicas are A, B, C: {flaky}"
    );
    let spread = find("steady-one-process", "chat-lb");
    let replicas: BTreeSet<&str> = spread["attempts_by_replica"]
        .as_object()
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default();
    assert_eq!(
        replicas,
        BTreeSet::from(["P1", "P2", "P3"]),
        "chat-lb spreads over the three servers of one process: {spread}"
    );
    let single = find("steady-one-process", "chat-lb-single");
    assert!(
        single["attempts_by_replica"]
            .as_object()
            .is_some_and(|m| m.len() == 1 && m.contains_key("P1")),
        "chat-lb-single uses direct's one replica: {single}"
    );
}
