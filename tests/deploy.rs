//! The deploy files stay in step with the binary: manifests parse, and the
//! ports, probe paths and environment names they use are the binary's.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Environment names the binary reads (from its own source).
fn known_env_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for file in ["src/cli.rs", "src/config.rs"] {
        let text = read(file);
        for (i, _) in text.match_indices("\"INTERCOM_") {
            let rest = &text[i + 1..];
            let end = rest.find('"').unwrap();
            names.insert(rest[..end].to_string());
        }
    }
    // Secrets are read as NAME or NAME_FILE.
    let with_file: Vec<String> = names.iter().map(|n| format!("{n}_FILE")).collect();
    names.extend(with_file);
    names
}

fn env_names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("INTERCOM_") {
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || *c == '_')
            .collect();
        out.insert(name);
    }
    out
}

#[test]
fn kubernetes_manifests_parse_and_match_the_binary() {
    let text = read("deploy/kubernetes/intercom-webhooks.yaml");
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("valid YAML"))
        .collect();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    for k in ["StatefulSet", "Service", "Secret", "NetworkPolicy"] {
        assert!(kinds.contains(&k), "{k} missing: {kinds:?}");
    }
    let sts = docs.iter().find(|d| d["kind"] == "StatefulSet").unwrap();
    assert_eq!(sts["spec"]["replicas"], 1);
    let c = &sts["spec"]["template"]["spec"]["containers"][0];
    let ports: Vec<u64> = c["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, [8080, 9090]);
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    let listen = c["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "INTERCOM_WEBHOOKS_LISTEN")
        .unwrap();
    assert_eq!(listen["value"], "0.0.0.0:8080");
    let known = known_env_names();
    for name in env_names_in(&text) {
        assert!(known.contains(&name), "{name} is not read by the binary");
    }
    let np = docs.iter().find(|d| d["kind"] == "NetworkPolicy").unwrap();
    assert!(serde_yaml::to_string(np).unwrap().contains("9090"));
}

/// The PostgreSQL example: two or more replicas with a disruption budget,
/// the backend chosen in its config, the database URL among the secrets.
#[test]
fn the_postgres_kubernetes_example_runs_replicas_with_a_disruption_budget() {
    let text = read("deploy/kubernetes/intercom-webhooks-postgres.yaml");
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("valid YAML"))
        .collect();
    let find = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("{kind} missing"))
    };
    let deployment = find("Deployment");
    assert!(deployment["spec"]["replicas"].as_u64().unwrap() >= 2);
    let pdb = find("PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(pdb["spec"]["selector"], deployment["spec"]["selector"]);
    let config = find("ConfigMap")["data"]["config.toml"].as_str().unwrap().to_string();
    let parsed: toml::Value = toml::from_str(&config).unwrap();
    assert_eq!(parsed["store"]["backend"].as_str(), Some("postgres"));
    let secret = &find("Secret")["stringData"];
    assert!(secret["INTERCOM_WEBHOOKS_DATABASE_URL"]
        .as_str()
        .unwrap()
        .contains("target_session_attrs=read-write"));
    let c = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    let known = known_env_names();
    for name in env_names_in(&text) {
        assert!(known.contains(&name), "{name} is not read by the binary");
    }
}

#[test]
fn systemd_container_and_proxy_match_the_binary() {
    let known = known_env_names();
    for file in [
        "deploy/systemd/intercom-webhooks.service",
        "deploy/systemd/intercom-webhooks.env.example",
        "deploy/Dockerfile",
    ] {
        for name in env_names_in(&read(file)) {
            assert!(known.contains(&name), "{file}: {name} is not read by the binary");
        }
    }
    let unit = read("deploy/systemd/intercom-webhooks.service");
    for line in [
        "StateDirectory=intercom-webhooks",
        "ProtectSystem=strict",
        "ExecStart=/usr/local/bin/intercom-webhooks serve",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.contains(line), "unit lacks {line}");
    }
    let docker = read("deploy/Dockerfile");
    assert!(docker.contains("EXPOSE 8080 9090") && docker.contains("/healthz") && docker.contains("USER 10001"));
    for proxy in ["deploy/proxy/Caddyfile", "deploy/proxy/nginx.conf"] {
        let text = read(proxy);
        assert!(
            text.contains("/webhooks/intercom") && text.contains("127.0.0.1:8080"),
            "{proxy}"
        );
        assert!(!text.contains("9090"), "{proxy} must not expose the admin listener");
    }
}

/// Every metric the alert rules and the dashboard use is one a real server
/// exposes (its `# TYPE` lines name every registered metric, counters and
/// histograms by their base name), so a renamed metric cannot leave an
/// alert silently watching nothing. `promtool check rules` and `promtool
/// test rules` run in CI (`.ci/run`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_rules_and_dashboard_use_metrics_the_server_exposes() {
    let dir = tempfile::tempdir().unwrap();
    let app = common::spawn_app(dir.path()).await;
    let scrape = app
        .client
        .get(format!("http://{}/metrics", app.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    app.stop().await;
    let exposed: BTreeSet<String> = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    assert!(exposed.contains("intercom_webhooks_store_ready"), "{exposed:?}");
    let mut used = BTreeSet::new();
    for file in ["deploy/monitoring/alerts.yml", "deploy/monitoring/dashboard.json"] {
        let text = read(file);
        for (i, _) in text.match_indices("intercom_webhooks_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            used.insert((file, name));
        }
    }
    assert!(used.len() > 10, "the files were read");
    let base = |n: &str| {
        for suffix in ["_total", "_bucket", "_count", "_sum"] {
            if let Some(b) = n.strip_suffix(suffix) {
                if exposed.contains(b) {
                    return b.to_string();
                }
            }
        }
        n.to_string()
    };
    let missing: Vec<_> = used.iter().filter(|(_, n)| !exposed.contains(&base(n))).collect();
    assert!(missing.is_empty(), "not exposed by the server: {missing:?}");
    // The rules file is YAML with the groups Prometheus expects.
    let rules: serde_yaml::Value = serde_yaml::from_str(&read("deploy/monitoring/alerts.yml")).unwrap();
    let alerts = rules["groups"][0]["rules"].as_sequence().unwrap();
    assert!(alerts.len() >= 7);
    let dashboard: serde_json::Value = serde_json::from_str(&read("deploy/monitoring/dashboard.json")).unwrap();
    assert!(dashboard["panels"].as_array().unwrap().len() >= 10);
}
