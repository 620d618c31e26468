//! The subcommands. Operator commands work on the store directly when no
//! server holds it, and through the admin API when one does; both paths
//! return the same JSON documents (`ops`), printed as JSON with `--json` or
//! as text.

use std::io::IsTerminal;

use serde_json::{json, Value};

use crate::app::open_store;
use crate::cli::{
    AuditCommand, CacheCommand, CacheKind as CliKind, Cli, Command, ConfigCommand, EventsCommand, ReplayArgs,
    SimulateArgs,
};
use crate::config::Settings;
use crate::ops::remote::{Remote, RemoteError};
use crate::ops::{self, FilterQuery, OpsError, ReplayRequest};
use crate::store::{CacheKind, Store, StoreError};

/// A command's failure: the exit code and a one-line reason.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
}

impl From<OpsError> for Failure {
    fn from(e: OpsError) -> Self {
        match e {
            OpsError::BadRequest(m) => Failure::new(2, m),
            OpsError::NotFound(m) => Failure::new(3, m),
            OpsError::Store(e) => Failure::new(1, e.to_string()),
        }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::new(1, e.to_string())
    }
}

impl From<RemoteError> for Failure {
    fn from(e: RemoteError) -> Self {
        match &e {
            RemoteError::Status { status: 404, message } => Failure::new(3, message.clone()),
            RemoteError::Status { status: 400, message } => Failure::new(2, message.clone()),
            _ => Failure::new(1, e.to_string()),
        }
    }
}

type CmdResult = Result<(), Failure>;

/// The store, or the admin API of the server that holds it. A local store
/// closes (committer drained, index checkpointed) when its last handle drops.
enum Access {
    Local(Store),
    Remote(Remote),
}

fn access(settings: &Settings) -> Result<Access, Failure> {
    if !settings.data_dir.join("index").exists() {
        // Nothing here to open: maybe a server elsewhere has it.
        return remote_or(
            settings,
            format!("there is no store in {}", settings.data_dir.display()),
        );
    }
    match open_store(settings) {
        Ok(store) => Ok(Access::Local(store)),
        Err(e) => match e.downcast_ref::<StoreError>() {
            Some(StoreError::Locked(_)) => remote_or(settings, e.to_string()),
            _ => Err(Failure::new(1, e.to_string())),
        },
    }
}

fn remote_or(settings: &Settings, why_not_local: String) -> Result<Access, Failure> {
    if settings.admin_token.is_none() {
        return Err(Failure::new(
            1,
            format!(
                "{why_not_local}, and INTERCOM_WEBHOOKS_ADMIN_TOKEN is not set to use the admin API at {}",
                settings.admin_url
            ),
        ));
    }
    Ok(Access::Remote(Remote::new(
        &settings.admin_url,
        settings.admin_token.clone(),
    )))
}

/// Runs blocking store work off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, Failure> + Send + 'static) -> Result<T, Failure> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Failure::new(1, e.to_string()))?
}

pub async fn run(cli: Cli, settings: Settings) -> CmdResult {
    let json_out = cli.json;
    match cli.command {
        Command::Serve(_) => unreachable_serve(),
        Command::Config(ConfigCommand::Check) => {
            print_doc(&settings.describe(), json_out, |d| {
                serde_json::to_string_pretty(d).unwrap_or_default()
            });
            Ok(())
        }
        Command::Simulate(args) => simulate(&settings, args, json_out).await,
        Command::Events(EventsCommand::List(f)) => {
            let q = FilterQuery {
                status: f.select.status,
                topic: f.select.topic,
                since: f.select.since,
                until: f.select.until,
                limit: f.limit,
                after: f.after,
            };
            let doc = match access(&settings)? {
                Access::Local(store) => blocking(move || Ok(ops::list_events(&store, &q)?)).await?,
                Access::Remote(r) => r.get("/admin/events", &query_pairs(&q)).await?,
            };
            print_doc(&doc, json_out, render_events);
            Ok(())
        }
        Command::Events(EventsCommand::Show { id, raw }) => {
            let doc = match access(&settings)? {
                Access::Local(store) => blocking(move || Ok(ops::show_event(&store, &id, raw)?)).await?,
                Access::Remote(r) => {
                    let query: Vec<(&str, String)> = if raw { vec![("raw", "true".into())] } else { vec![] };
                    r.get(&format!("/admin/events/{}", encode_path(&id)), &query).await?
                }
            };
            print_doc(&doc, json_out, |d| serde_json::to_string_pretty(d).unwrap_or_default());
            Ok(())
        }
        Command::Replay(args) => replay(&settings, args, json_out).await,
        Command::Stats => {
            let doc = match access(&settings)? {
                Access::Local(store) => blocking(move || Ok(ops::stats(&store, None)?)).await?,
                Access::Remote(r) => r.get("/admin/stats", &[]).await?,
            };
            print_doc(&doc, json_out, render_stats);
            Ok(())
        }
        Command::Purge(args) => {
            let doc = match access(&settings)? {
                Access::Local(store) => crate::purge::run_once(&store, &settings, args.dry_run).await?.to_json(),
                Access::Remote(r) => r.post("/admin/purge", &json!({"dry_run": args.dry_run})).await?,
            };
            print_doc(&doc, json_out, render_purge);
            Ok(())
        }
        Command::Cache(CacheCommand::Show { kind, id }) => {
            let (kind, path) = match kind {
                CliKind::Contact => (CacheKind::Contact, "contacts"),
                CliKind::Conversation => (CacheKind::Conversation, "conversations"),
            };
            let doc = match access(&settings)? {
                Access::Local(store) => {
                    let codec = crate::cache::CacheCodec::new(
                        store.keys().clone(),
                        settings.cache.contact_custom_attributes.clone(),
                    );
                    blocking(move || Ok(ops::cache_show(&store, &codec, kind, &id)?)).await?
                }
                Access::Remote(r) => r.get(&format!("/admin/{path}/{}", encode_path(&id)), &[]).await?,
            };
            print_doc(&doc, json_out, |d| serde_json::to_string_pretty(d).unwrap_or_default());
            Ok(())
        }
        Command::Cache(CacheCommand::Clear { yes }) => {
            if !yes {
                eprintln!("cache clear would remove every cached contact and conversation record (tombstones stay; `replay --all` rebuilds the cache). Run again with --yes to do it.");
                return Err(Failure::new(2, "not confirmed: add --yes"));
            }
            let doc = match access(&settings)? {
                Access::Local(store) => blocking(move || Ok(ops::cache_clear(&store)?)).await?,
                Access::Remote(r) => r.post("/admin/cache/clear", &json!({"yes": true})).await?,
            };
            print_doc(&doc, json_out, |d| format!("removed {} cached records", d["removed"]));
            Ok(())
        }
        Command::Erase(args) => erase(&settings, args, json_out).await,
        Command::Backup { out, force } => backup(&settings, &out, force, json_out).await,
        Command::RotateDataKey { write_key_file } => rotate_data_key(&settings, write_key_file, json_out),
        Command::Restore {
            from,
            ledger,
            without_ledger,
        } => restore(&settings, &from, ledger.as_deref(), without_ledger, json_out),
        Command::Export(args) => export(&settings, args).await,
        Command::Audit(cmd) => {
            let (verify, expect) = match cmd {
                AuditCommand::Verify { expect_head } => (true, expect_head),
                AuditCommand::List => (false, None),
            };
            let head = match expect.as_deref() {
                None => None,
                Some(text) => Some(crate::audit::parse_head(text).ok_or_else(|| {
                    Failure::new(
                        2,
                        "--expect-head takes SEQ:HASH (the sequence number and the 64-hex hash)",
                    )
                })?),
            };
            let doc = match access(&settings)? {
                Access::Local(store) => {
                    blocking(move || {
                        Ok(if verify {
                            crate::audit::verify(&store, head)?
                        } else {
                            crate::audit::list(&store)?
                        })
                    })
                    .await?
                }
                Access::Remote(r) => {
                    let query: Vec<(&str, String)> = expect.iter().map(|h| ("expect_head", h.clone())).collect();
                    r.get(if verify { "/admin/audit/verify" } else { "/admin/audit" }, &query)
                        .await?
                }
            };
            if verify {
                print_doc(&doc, json_out, |d| match d["ok"].as_bool() {
                    Some(true) => format!(
                        "audit log intact: {} entries, head {}:{}",
                        d["entries"],
                        d["head"]["seq"],
                        d["head"]["hash"].as_str().unwrap_or("-")
                    ),
                    _ if d["first_bad_seq"].is_null() => {
                        format!("audit log BROKEN: {}", d["reason"].as_str().unwrap_or(""))
                    }
                    _ => format!(
                        "audit log BROKEN at entry {}: {}",
                        d["first_bad_seq"],
                        d["reason"].as_str().unwrap_or("")
                    ),
                });
                if doc["ok"].as_bool() != Some(true) {
                    return Err(Failure::new(1, "audit verification failed"));
                }
            } else {
                print_doc(&doc, json_out, render_audit);
            }
            Ok(())
        }
    }
}

fn unreachable_serve() -> CmdResult {
    Err(Failure::new(1, "serve is run by main"))
}

fn query_pairs(q: &FilterQuery) -> Vec<(&'static str, String)> {
    let mut v = Vec::new();
    for (k, val) in [
        ("status", &q.status),
        ("topic", &q.topic),
        ("since", &q.since),
        ("until", &q.until),
        ("after", &q.after),
    ] {
        if let Some(x) = val {
            v.push((k, x.clone()));
        }
    }
    if let Some(l) = q.limit {
        v.push(("limit", l.to_string()));
    }
    v
}

fn encode_path(id: &str) -> String {
    id.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.:".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn replay(settings: &Settings, args: ReplayArgs, json_out: bool) -> CmdResult {
    let req = ReplayRequest {
        ids: args.ids,
        status: args.select.status,
        topic: args.select.topic,
        since: args.select.since,
        until: args.select.until,
        all: args.all,
        dry_run: args.dry_run,
    };
    let doc = match access(settings)? {
        Access::Remote(r) => {
            r.post("/admin/replay", &serde_json::to_value(&req).unwrap_or_default())
                .await?
        }
        Access::Local(store) => {
            let codec = std::sync::Arc::new(crate::cache::CacheCodec::new(
                store.keys().clone(),
                settings.cache.contact_custom_attributes.clone(),
            ));
            let ctx = crate::worker::WorkerCtx {
                store: store.clone(),
                codec,
                metrics: std::sync::Arc::new(crate::metrics::Metrics::new()),
                settings: settings.worker.clone(),
                runtime: tokio::runtime::Handle::current(),
                intake_load: crate::intake_load::IntakeLoad::default(),
            };
            blocking(move || {
                let (keys, _) = ops::select_replay(&store, &req)?;
                if req.dry_run {
                    return Ok(json!({"matched": keys.len(), "replayed": 0, "ids": keys}));
                }
                // No server runs: the handlers run here, with a progress bar
                // on a terminal.
                let bar = progress_bar(keys.len() as u64);
                let mut replayed = 0u64;
                for key in &keys {
                    crate::worker::process(&ctx, key)?;
                    replayed += 1;
                    if let Some(b) = &bar {
                        b.set_position(replayed);
                    }
                }
                if let Some(b) = bar {
                    b.finish_and_clear();
                }
                Ok(json!({"matched": keys.len(), "replayed": replayed}))
            })
            .await?
        }
    };
    print_doc(&doc, json_out, |d| {
        let mut s = format!("matched {}, replayed {}", d["matched"], d["replayed"]);
        if let Some(ids) = d["ids"].as_array() {
            for id in ids {
                s.push_str(&format!("\n  {}", id.as_str().unwrap_or("")));
            }
        }
        s
    });
    Ok(())
}

/// A progress bar on stderr when it is a terminal, else nothing.
fn progress_bar(len: u64) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() || len < 100 {
        return None;
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} events replayed ({per_sec}, eta {eta})")
    {
        bar.set_style(style);
    }
    Some(bar)
}

async fn simulate(settings: &Settings, args: SimulateArgs, json_out: bool) -> CmdResult {
    if args.list {
        print_doc(&json!(crate::samples::TOPICS), json_out, |_| {
            crate::samples::TOPICS.join("\n")
        });
        return Ok(());
    }
    let topic = args.topic.unwrap_or_default();
    let body = crate::samples::sample(&topic).ok_or_else(|| {
        Failure::new(
            2,
            format!("no sample for topic '{topic}'; `simulate --list` shows the topics there are"),
        )
    })?;
    let secret = settings.client_secrets.first().ok_or_else(|| {
        Failure::new(
            2,
            "INTERCOM_CLIENT_SECRET is not set: simulate signs with the same secret the receiver verifies with",
        )
    })?;
    let url = args
        .url
        .unwrap_or_else(|| format!("http://{}/webhooks/intercom", settings.listen));
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let signature = crate::verify::sign(secret.expose(), &bytes);
    let resp = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .header("x-hub-signature", signature)
        .header("user-agent", "intercom-webhooks-simulate")
        .body(bytes)
        .send()
        .await
        .map_err(|e| Failure::new(1, format!("cannot post to {url}: {}", e.without_url())))?;
    let status = resp.status().as_u16();
    let doc = json!({"topic": topic, "id": body["id"], "url": url, "status": status});
    print_doc(&doc, json_out, |d| {
        format!("{} {} -> {}", d["topic"].as_str().unwrap_or(""), d["id"], d["status"])
    });
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(Failure::new(1, format!("the receiver answered {status}")))
    }
}

fn print_doc(doc: &Value, json_out: bool, text: impl Fn(&Value) -> String) {
    if json_out {
        println!("{}", serde_json::to_string_pretty(doc).unwrap_or_default());
    } else {
        println!("{}", text(doc));
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn render_events(d: &Value) -> String {
    let mut out = format!(
        "{:<25} {:<10} {:<36} {:>4}  {}\n",
        "RECEIVED", "STATUS", "TOPIC", "DLV", "ID"
    );
    for e in d["events"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:<25} {:<10} {:<36} {:>4}  {}\n",
            s(&e["received_at"]),
            s(&e["status"]),
            s(&e["topic"]),
            s(&e["deliveries"]),
            s(&e["id"])
        ));
    }
    if let Some(c) = d["next_cursor"].as_str() {
        out.push_str(&format!("(more: --after {c})\n"));
    }
    out.trim_end().to_string()
}

fn render_stats(d: &Value) -> String {
    let mut out = String::from("events by status:\n");
    for (k, v) in d["events_by_status"].as_object().into_iter().flatten() {
        out.push_str(&format!("  {k:<10} {v}\n"));
    }
    out.push_str("events by topic:\n");
    for (k, v) in d["events_by_topic"].as_object().into_iter().flatten() {
        out.push_str(&format!("  {k:<40} {v}\n"));
    }
    for key in [
        "pending_depth",
        "oldest_pending_age_secs",
        "last_received_at",
        "duplicates_seen",
        "signature_failures_since_start",
        "store_size_bytes",
    ] {
        if d.get(key).is_some() {
            out.push_str(&format!("{key}: {}\n", s(&d[key])));
        }
    }
    if let Some(h) = d.get("webhook_health") {
        out.push_str(&format!(
            "webhook health: {} consecutive errors, last 2xx {} ({}s ago)\n",
            s(&h["consecutive_errors"]),
            s(&h["last_2xx_at"]),
            s(&h["seconds_since_last_2xx"])
        ));
    }
    out.trim_end().to_string()
}

fn render_purge(d: &Value) -> String {
    let mut out = String::from(if d["dry_run"].as_bool() == Some(true) {
        "would remove:\n"
    } else {
        "removed:\n"
    });
    for (k, v) in d["removed"].as_object().into_iter().flatten() {
        out.push_str(&format!("  {k:<14} {v}\n"));
    }
    out.trim_end().to_string()
}

fn render_audit(d: &Value) -> String {
    let mut out = String::new();
    for e in d["entries"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{:>6} {:<25} {:<12} {}\n",
            s(&e["seq"]),
            s(&e["at"]),
            s(&e["action"]),
            e["details"]
        ));
    }
    if out.is_empty() {
        out.push_str("(no audit entries)");
    }
    out.trim_end().to_string()
}

fn intercom_client(settings: &Settings) -> Option<crate::client::IntercomClient> {
    crate::client::IntercomClient::new(&settings.api_base_url, settings.access_token.clone(), None).ok()
}

fn privacy_failure(e: crate::privacy::PrivacyError) -> Failure {
    match e {
        crate::privacy::PrivacyError::BadRequest(m) => Failure::new(2, m),
        crate::privacy::PrivacyError::NotFound(m) => Failure::new(3, m),
        other => Failure::new(1, other.to_string()),
    }
}

async fn erase(settings: &Settings, args: crate::cli::EraseArgs, json_out: bool) -> CmdResult {
    // Without --yes it is a dry run that says so and exits 2.
    let dry_run = args.dry_run || !args.yes;
    let body = json!({"email": args.email, "contact_id": args.contact_id, "external_id": args.external_id, "dry_run": dry_run, "local_only": args.local_only});
    let doc = match access(settings)? {
        Access::Remote(r) => r.post("/admin/erase", &body).await?,
        Access::Local(store) => {
            let subject = crate::privacy::Subject::from_parts(args.email, args.contact_id, args.external_id)
                .map_err(privacy_failure)?;
            let codec =
                crate::cache::CacheCodec::new(store.keys().clone(), settings.cache.contact_custom_attributes.clone());
            let client = intercom_client(settings);
            crate::privacy::erase(&store, &codec, client.as_ref(), subject, dry_run, args.local_only)
                .await
                .map_err(privacy_failure)?
        }
    };
    print_doc(&doc, json_out, |d| serde_json::to_string_pretty(d).unwrap_or_default());
    if !args.yes && !args.dry_run {
        eprintln!("Nothing was erased: the above is what would go. Run again with --yes to erase.");
        return Err(Failure::new(2, "not confirmed: add --yes"));
    }
    Ok(())
}

async fn export(settings: &Settings, args: crate::cli::ExportArgs) -> CmdResult {
    let body = json!({"email": args.email, "contact_id": args.contact_id, "external_id": args.external_id, "local_only": args.local_only});
    let doc = match access(settings)? {
        Access::Remote(r) => r.post("/admin/export", &body).await?,
        Access::Local(store) => {
            let subject = crate::privacy::Subject::from_parts(args.email, args.contact_id, args.external_id)
                .map_err(privacy_failure)?;
            let codec =
                crate::cache::CacheCodec::new(store.keys().clone(), settings.cache.contact_custom_attributes.clone());
            let client = intercom_client(settings);
            crate::privacy::export(&store, &codec, client.as_ref(), subject, args.local_only)
                .await
                .map_err(privacy_failure)?
        }
    };
    let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    match args.out {
        Some(path) => {
            use std::io::Write;
            let cannot = |e: std::io::Error| Failure::new(1, format!("cannot write {}: {e}", path.display()));
            let (mut f, out) = crate::fsutil::create_out(&path, args.force).map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => Failure::new(2, format!("--out {}: {e}", path.display())),
                _ => cannot(e),
            })?;
            f.write_all(text.as_bytes()).map_err(cannot)?;
            out.finish(f).map_err(cannot)?;
            eprintln!("export written to {}", path.display());
        }
        None => println!("{text}"),
    }
    Ok(())
}

async fn backup(settings: &Settings, out: &std::path::Path, force: bool, json_out: bool) -> CmdResult {
    let cannot = |e: std::io::Error| Failure::new(1, format!("cannot write {}: {e}", out.display()));
    let (file, dest) = crate::fsutil::create_out(out, force).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => Failure::new(2, format!("--out {}: {e}", out.display())),
        _ => cannot(e),
    })?;
    let (doc, file) = match access(settings)? {
        Access::Remote(r) => {
            let mut w = std::io::BufWriter::new(file);
            let bytes = r.download("/admin/backup", &mut w).await?;
            let file = w.into_inner().map_err(|e| cannot(e.into_error()))?;
            (
                json!({"out": out.display().to_string(), "bytes": bytes, "via": "admin API"}),
                file,
            )
        }
        Access::Local(store) => {
            let path = out.to_path_buf();
            blocking(move || {
                let mut w = std::io::BufWriter::new(file);
                let (entries, files) = store.backup(&mut w)?;
                let file = w.into_inner().map_err(|e| Failure::new(1, e.into_error().to_string()))?;
                Ok((
                    json!({"out": path.display().to_string(), "index_entries": entries, "files": files, "via": "store"}),
                    file,
                ))
            })
            .await?
        }
    };
    dest.finish(file).map_err(cannot)?;
    print_doc(&doc, json_out, |d| {
        format!("backup written to {}", d["out"].as_str().unwrap_or(""))
    });
    Ok(())
}

/// Restores a backup into an empty data dir, then applies every erasure in
/// the ledger (the backup's own, and those of the ledger it is given) before
/// anything can read the restored data.
fn restore(
    settings: &Settings,
    from: &std::path::Path,
    ledger: Option<&std::path::Path>,
    without_ledger: bool,
    json_out: bool,
) -> CmdResult {
    let own_ledger = settings.data_dir.join(crate::store::LEDGER_FILE);
    if ledger.is_none() && !without_ledger && !own_ledger.exists() {
        return Err(Failure::new(
            2,
            "restore needs the erasure ledger of the data dir being replaced, so that nobody erased after the backup comes back: \
             --ledger FILE (its erasures.ledger), or --without-ledger when there is none",
        ));
    }
    let mut input = std::io::BufReader::new(
        std::fs::File::open(from).map_err(|e| Failure::new(1, format!("cannot read {}: {e}", from.display())))?,
    );
    let (entries, files) = crate::store::restore(&mut input, &settings.data_dir)?;
    let merged = match ledger {
        Some(l) => crate::store::merge_ledger(&settings.data_dir, l)?,
        None => 0,
    };
    // Opening applies the ledger and shreds what it erases.
    let store = open_store(settings).map_err(|e| {
        Failure::new(
            1,
            format!("restored, but the store does not open (is the data key configured?): {e}"),
        )
    })?;
    let erasures = store.ledger_len()?;
    store.close()?;
    let doc = json!({
        "data_dir": settings.data_dir.display().to_string(),
        "index_entries": entries,
        "files": files,
        "ledger_entries_added": merged,
        "erasures_in_ledger": erasures,
    });
    print_doc(&doc, json_out, |d| {
        format!(
            "restored {} index entries and {} files into {}; {} erasures in the ledger applied",
            d["index_entries"],
            d["files"],
            d["data_dir"].as_str().unwrap_or(""),
            d["erasures_in_ledger"]
        )
    });
    Ok(())
}

fn rotate_data_key(settings: &Settings, write_key_file: bool, json_out: bool) -> CmdResult {
    use crate::crypto::{self, DataKey};
    let new = settings.new_data_key.as_ref().ok_or_else(|| {
        Failure::new(
            2,
            "INTERCOM_WEBHOOKS_NEW_DATA_KEY (or _FILE) is not set: give the new 32-byte key, hex or base64",
        )
    })?;
    let new = DataKey::parse(new.expose()).map_err(|_| {
        Failure::new(
            2,
            "INTERCOM_WEBHOOKS_NEW_DATA_KEY must be 32 bytes as 64 hex characters or base64",
        )
    })?;
    if !settings.data_dir.join(crypto::ROOT_FILE).exists() {
        return Err(Failure::new(
            1,
            format!("there is no store in {}", settings.data_dir.display()),
        ));
    }
    let resuming = settings.data_dir.join(crypto::ROOT_NEXT_FILE).exists();
    // Opening the store proves the old key works and that no server holds
    // it (a rotation being resumed cannot open it: the rotation checks both).
    if !resuming {
        match open_store(settings) {
            Ok(store) => store.close()?,
            Err(e) => match e.downcast_ref::<StoreError>() {
                Some(StoreError::Locked(_)) => {
                    return Err(Failure::new(
                        1,
                        "the store is in use: stop the server before rotating the data key",
                    ))
                }
                _ => return Err(Failure::new(1, e.to_string())),
            },
        }
    }
    let (old, source) = DataKey::load_or_create(settings.data_key.as_ref(), &settings.data_dir)
        .map_err(|e| Failure::new(1, e.to_string()))?;
    let mut doc = crate::rotation::rotate(
        &settings.data_dir,
        &settings.store,
        &old,
        &new,
        settings.cache.contact_custom_attributes.clone(),
    )
    .map_err(|e| match e {
        crate::rotation::RotationError::Store(StoreError::Locked(_)) => {
            Failure::new(1, "the store is in use: stop the server before rotating the data key")
        }
        e => Failure::new(1, e.to_string()),
    })?;
    let key_file = settings.data_dir.join(crypto::KEY_FILE);
    if write_key_file {
        crypto::replace_key_file(&settings.data_dir, &new).map_err(|e| Failure::new(1, e.to_string()))?;
    } else if source != crypto::KeySource::Configured && key_file.exists() {
        // The old generated key opens nothing now; the new one is never
        // written beside the data it protects unless asked.
        std::fs::remove_file(&key_file).map_err(|e| Failure::new(1, e.to_string()))?;
    }
    doc["key_file_written"] = json!(write_key_file);
    print_doc(&doc, json_out, |_| {
        if write_key_file {
            "data key rotated; data.key now holds the new key".to_string()
        } else {
            "data key rotated: set INTERCOM_WEBHOOKS_DATA_KEY to the new key before the next start".to_string()
        }
    });
    Ok(())
}
