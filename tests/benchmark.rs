//! The benchmark example runs end to end: a tiny `chat-bench` run starts its replica
//! processes (including the one serving three endpoints, and the replica killed and
//! restarted every round), carries calls through every contender and writes the JSON
//! lines the README documents; and its delivery scenarios time every message sent to
//! its live stream. It checks the plumbing and the balancer's zero-failure promise, not
//! performance: figures come from real runs of the example.

use std::{collections::BTreeSet, process::Command};

use serde_json::Value;

/// Runs a tiny `chat-bench` of `scenarios` with its store and JSON lines in `dir`
/// (and any `extra` flags); returns its stdout and the JSON rows.
fn run_bench(dir: &std::path::Path, scenarios: &str, extra: &[&str]) -> (String, Vec<Value>) {
    let mut args = vec!["--seed", "7", "--duration", "400ms", "--rounds", "2"];
    args.extend(["--concurrency", "2", "--scenarios", scenarios]);
    args.extend_from_slice(extra);
    run_bench_args(dir, &args)
}

/// Runs a tiny `chat-bench` with `args` and its store and JSON lines in `dir`;
/// returns its stdout and the JSON rows.
fn run_bench_args(dir: &std::path::Path, args: &[&str]) -> (String, Vec<Value>) {
    let bench = chat_testkit::workspace_binary("examples/chat-bench");
    let json = dir.join("bench.jsonl");
    let output = Command::new(bench)
        .args(args)
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
    let (stdout, rows) = run_bench(
        dir.path(),
        "steady-one-process,killed-replica,flaky-replica",
        &[],
    );
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

/// `overloaded-replica`: `O` sheds most of its share of the calls (all of them
/// `SendMessage` here, which it does not exempt), and chat-lb still fails none.
#[test]
fn chat_lb_fails_no_call_with_an_overloaded_replica() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let bench = chat_testkit::workspace_binary("examples/chat-bench");
    let json = dir.path().join("bench.jsonl");
    let output = Command::new(bench)
        .args(["--seed", "7", "--duration", "400ms", "--rounds", "1"])
        .args(["--concurrency", "8", "--send-percent", "100"])
        .args([
            "--scenarios",
            "overloaded-replica",
            "--contenders",
            "chat-lb",
        ])
        .arg("--json")
        .arg(&json)
        .arg("--store-dir")
        .arg(dir.path())
        .output()
        .expect("run chat-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "chat-bench failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&json).expect("the JSON lines file");
    let row: Value = serde_json::from_str(text.lines().next().expect("one row")).expect("JSON");
    assert_eq!(row["scenario"], "overloaded-replica", "{row}");
    assert!(row["calls"].as_u64().unwrap_or(0) > 0, "{row}");
    assert_eq!(row["failed"], 0, "chat-lb failed calls: {row}");
    let replicas: BTreeSet<&str> = row["attempts_by_replica"]
        .as_object()
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default();
    assert_eq!(replicas, BTreeSet::from(["A", "B", "O"]), "{row}");
}

#[test]
fn tail_latency_runs_chat_lb_hedged_against_a_stalling_replica() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let contenders = ["--contenders", "chat-lb,chat-lb-hedged"];
    let (stdout, rows) = run_bench(dir.path(), "steady,tail-latency", &contenders);
    let cells: BTreeSet<(&str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["scenario"].as_str().unwrap_or_default(),
                r["contender"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        cells,
        BTreeSet::from([
            ("steady", "chat-lb"),
            ("steady", "chat-lb-hedged"),
            ("tail-latency", "chat-lb"),
            ("tail-latency", "chat-lb-hedged"),
        ])
    );
    let hedged = rows
        .iter()
        .find(|r| r["scenario"] == "tail-latency" && r["contender"] == "chat-lb-hedged")
        .expect("row");
    assert_eq!(hedged["failed"], 0, "{hedged}");
    let replicas: BTreeSet<&str> = hedged["attempts_by_replica"]
        .as_object()
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default();
    assert_eq!(replicas, BTreeSet::from(["A", "B", "T"]), "{hedged}");
    assert!(
        stdout.contains("tail-latency: chat-lb-hedged p99 at most 1.5x"),
        "the target is judged: {stdout}"
    );
}

#[test]
fn store_throughput_sends_only_and_measures_the_sqlite_ceiling() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (stdout, rows) = run_bench(dir.path(), "store-throughput", &[]);
    assert!(
        stdout.contains(&dir.path().display().to_string()),
        "{stdout}"
    );
    let cells: Vec<(&str, &str, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["scenario"].as_str().unwrap_or_default(),
                r["contender"].as_str().unwrap_or_default(),
                r["concurrency"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        cells,
        [
            ("store-throughput", "direct", 2),
            ("store-throughput", "chat-lb", 2),
            ("store-throughput", "sqlite-ceiling", 1),
        ],
        "direct and chat-lb, then one sqlite-ceiling row"
    );
    for row in &rows {
        assert!(row["calls_per_sec"].as_f64().unwrap_or(0.0) > 0.0, "{row}");
        assert_eq!(row["failed"], 0, "{row}");
        assert_eq!(row["settings"]["send_percent"], 100, "{row}");
        assert_eq!(row["rpc"]["HealthCheck"]["calls"], 0, "only sends: {row}");
    }
}

#[test]
fn store_uri_runs_the_replicas_on_the_given_store() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let given = dir.path().join("given.db");
    let uri = format!("sqlite:{}", given.display());
    let (_, rows) = run_bench(
        dir.path(),
        "store-throughput",
        &["--contenders", "direct", "--store-uri", &uri],
    );
    let sent: u64 = rows
        .iter()
        .filter(|r| r["contender"] == "direct")
        .map(|r| r["rpc"]["SendMessage"]["calls"].as_u64().unwrap_or(0))
        .sum();
    assert!(sent > 0, "{rows:?}");
    // The sends went to the given store.
    let stored: u64 = rusqlite::Connection::open(&given)
        .expect("the given store")
        .query_row("SELECT COUNT(*) FROM messages", [], |row| row.get(0))
        .expect("count messages");
    assert!(stored > 0, "nothing stored in {}", given.display());
}

#[test]
fn the_delivery_scenarios_time_every_message_to_its_live_stream() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let subscribers = 40;
    let (stdout, rows) = run_bench_args(
        dir.path(),
        &[
            "--duration",
            "500ms",
            "--subscribers",
            &subscribers.to_string(),
            "--scenarios",
            "delivery-same-replica,delivery-cross-replica",
        ],
    );
    assert!(
        stdout.contains("(issue 14)"),
        "the delivery targets: {stdout}"
    );
    let scenarios: Vec<&str> = rows
        .iter()
        .map(|r| r["scenario"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        scenarios,
        ["delivery-same-replica", "delivery-cross-replica"],
        "one row each"
    );
    for row in &rows {
        assert_eq!(row["contender"], "direct", "{row}");
        assert_eq!(row["subscribers"], subscribers, "{row}");
        assert_eq!(row["failed"], 0, "every send delivered: {row}");
        let delivered = row["calls"].as_u64().unwrap_or(0);
        // A steady 200 messages/s for 500ms: about 100, never more (fewer when the
        // machine is too busy to keep the pace).
        assert!((1..=110).contains(&delivered), "{row}");
        assert_eq!(
            row["rpc"]["SendMessage"]["calls"], delivered,
            "one delivery per accepted send: {row}"
        );
        let (p50, p999) = (row["p50_us"].as_u64(), row["p999_us"].as_u64());
        assert!(
            p50.is_some_and(|p50| p50 > 0 && p999.is_some_and(|p999| p50 <= p999)),
            "{row}"
        );
    }
}
