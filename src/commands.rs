//! The subcommands: each an adapter from the CLI's flags to one `ops`
//! action, run through `ops::Target` (the store here, or the admin API of
//! the server that holds it), printed as JSON with `--json` or as text.

use std::io::IsTerminal;
use std::sync::Arc;

use serde_json::json;

use crate::cli::{
    AuditCommand, CacheCommand, CacheKind as CliKind, Cli, Command, ConfigCommand, EventsCommand, ReplayArgs,
    SimulateArgs,
};
use crate::config::Settings;
use crate::ops::{
    self, AuditList, AuditVerify, CacheClear, CacheShow, Erase, Export, FilterQuery, ListEvents, OpsError, Purge,
    Replay, ReplayRequest, ShowEvent, Stats, SubjectRequest, Target,
};
use crate::render::{
    pretty, print_doc, render_audit, render_discovery, render_erasure_jobs, render_events, render_purge, render_replay,
    render_stats, render_verify,
};
use crate::store::CacheKind;

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
            other => Failure::new(1, other.to_string()),
        }
    }
}

type CmdResult = Result<(), Failure>;

pub async fn run(cli: Cli, settings: Settings) -> CmdResult {
    let json_out = cli.json;
    match cli.command {
        Command::Serve(_) => Err(Failure::new(1, "serve is run by main")),
        Command::Config(ConfigCommand::Check) => {
            print_doc(&settings.describe(), json_out, pretty);
            Ok(())
        }
        Command::Simulate(args) => simulate(&settings, args, json_out).await,
        Command::MigrateStore => {
            let done = ops::data_dir::migrate_store(&settings).await?;
            print_doc(&done, json_out, pretty);
            Ok(())
        }
        Command::Migrate => {
            let done = ops::data_dir::migrate(&settings).await?;
            print_doc(&done, json_out, pretty);
            Ok(())
        }
        Command::ExportMessages(args) => export_messages(&settings, args, json_out).await,
        Command::Reconcile { since, dry_run } => {
            let mut target = target(&settings)?;
            let bar = Arc::new(std::sync::OnceLock::<Option<indicatif::ProgressBar>>::new());
            if let Target::Local(local) = &mut target {
                let b = bar.clone();
                local.progress = Some(Arc::new(move |done, _| {
                    if let Some(bar) = b.get_or_init(|| {
                        std::io::stderr()
                            .is_terminal()
                            .then(indicatif::ProgressBar::new_spinner)
                    }) {
                        bar.set_message(format!("{done} items looked at"));
                        bar.tick();
                    }
                }));
            }
            let report = target.run(ops::workspace::Reconcile { since, dry_run }).await?;
            if let Some(Some(b)) = bar.get() {
                b.finish_and_clear();
            }
            print_doc(&report, json_out, |d| {
                format!(
                    "{}contacts changed {}, conversations changed {}, contacts deleted {}, conversations deleted {}; stored {}, already seen {}, skipped {}",
                    if d["dry_run"] == true { "(dry run) " } else { "" },
                    d["contacts_changed"],
                    d["conversations_changed"],
                    d["contacts_deleted"],
                    d["conversations_deleted"],
                    d["stored"],
                    d["duplicates"],
                    d["skipped"]
                )
            });
            Ok(())
        }
        Command::Discover { include_archived } => {
            let found = ops::workspace::discover(&settings, include_archived).await?;
            print_doc(&found, json_out, render_discovery);
            Ok(())
        }
        Command::Events(EventsCommand::List(f)) => {
            let q = FilterQuery {
                status: f.select.status,
                topic: f.select.topic,
                since: f.select.since,
                until: f.select.until,
                limit: f.limit,
                after: f.after,
                scan: None,
                scan_ms: None,
            };
            let list = target(&settings)?.run(ListEvents(q)).await?;
            print_doc(&list, json_out, render_events);
            Ok(())
        }
        Command::Events(EventsCommand::Show { id, raw }) => {
            let event = target(&settings)?.run(ShowEvent { id, raw }).await?;
            print_doc(&event, json_out, pretty);
            Ok(())
        }
        Command::Replay(args) => replay(&settings, args, json_out).await,
        Command::Stats => {
            print_doc(&target(&settings)?.run(Stats).await?, json_out, render_stats);
            Ok(())
        }
        Command::Purge(args) => {
            let purged = target(&settings)?.run(Purge { dry_run: args.dry_run }).await?;
            print_doc(&purged, json_out, render_purge);
            Ok(())
        }
        Command::Cache(CacheCommand::Show { kind, id }) => {
            let kind = match kind {
                CliKind::Contact => CacheKind::Contact,
                CliKind::Conversation => CacheKind::Conversation,
            };
            print_doc(&target(&settings)?.run(CacheShow { kind, id }).await?, json_out, pretty);
            Ok(())
        }
        Command::Cache(CacheCommand::Clear { yes }) => {
            if !yes {
                eprintln!("cache clear would remove every cached contact and conversation record (tombstones stay; `replay --all` rebuilds the cache). Run again with --yes to do it.");
                return Err(Failure::new(2, "not confirmed: add --yes"));
            }
            let cleared = target(&settings)?.run(CacheClear { yes }).await?;
            print_doc(&cleared, json_out, |d| {
                format!("removed {} cached records", d["removed"])
            });
            Ok(())
        }
        Command::Erase(args) => erase(&settings, args, json_out).await,
        Command::Backup { out, force } => backup(&settings, &out, force, json_out).await,
        Command::RotateDataKey { write_key_file } => {
            let rotated = ops::data_dir::rotate_data_key(&settings, write_key_file)?;
            print_doc(&rotated, json_out, |_| {
                if write_key_file {
                    "data key rotated; data.key now holds the new key".to_string()
                } else {
                    "data key rotated: set INTERCOM_WEBHOOKS_DATA_KEY to the new key before the next start".to_string()
                }
            });
            Ok(())
        }
        Command::Restore {
            from,
            ledger,
            without_ledger,
        } => {
            let restored = ops::data_dir::restore(&settings, &from, ledger.as_deref(), without_ledger)?;
            print_doc(&restored, json_out, |d| {
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
        Command::Export(args) => export(&settings, args).await,
        Command::Audit(AuditCommand::List) => {
            print_doc(&target(&settings)?.run(AuditList).await?, json_out, render_audit);
            Ok(())
        }
        Command::Audit(AuditCommand::Verify { expect_head }) => {
            if expect_head
                .as_deref()
                .is_some_and(|h| crate::audit::parse_head(h).is_none())
            {
                return Err(Failure::new(
                    2,
                    "--expect-head takes SEQ:HASH (the sequence number and the 64-hex hash)",
                ));
            }
            let check = target(&settings)?.run(AuditVerify { expect_head }).await?;
            print_doc(&check, json_out, render_verify);
            if !check.ok {
                return Err(Failure::new(1, "audit verification failed"));
            }
            Ok(())
        }
    }
}

/// The store here, or the admin API of the server that holds it.
fn target(settings: &Settings) -> Result<Target, Failure> {
    Ok(Target::open(settings)?)
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
    let mut target = target(settings)?;
    let bar = Arc::new(std::sync::OnceLock::<Option<indicatif::ProgressBar>>::new());
    if let Target::Local(local) = &mut target {
        // No server runs: the handlers run here, with a progress bar on a
        // terminal.
        let b = bar.clone();
        local.progress = Some(Arc::new(move |done, total| {
            if let Some(bar) = b.get_or_init(|| progress_bar(total)) {
                bar.set_position(done);
            }
        }));
    }
    let replayed = target.run(Replay(req)).await?;
    if let Some(Some(b)) = bar.get() {
        b.finish_and_clear();
    }
    print_doc(&replayed, json_out, render_replay);
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

async fn erase(settings: &Settings, args: crate::cli::EraseArgs, json_out: bool) -> CmdResult {
    if args.status {
        let jobs = target(settings)?.run(crate::ops::ListErasures).await?;
        print_doc(&jobs, json_out, render_erasure_jobs);
        return Ok(());
    }
    // Without --yes it is a dry run that says so and exits 2.
    let dry_run = args.dry_run || !args.yes;
    let req = SubjectRequest {
        email: args.email,
        contact_id: args.contact_id,
        external_id: args.external_id,
        dry_run,
        local_only: args.local_only,
    };
    let report = target(settings)?.run(Erase(req)).await?;
    print_doc(&report, json_out, pretty);
    if !args.yes && !args.dry_run {
        eprintln!("Nothing was erased: the above is what would go. Run again with --yes to erase.");
        return Err(Failure::new(2, "not confirmed: add --yes"));
    }
    Ok(())
}

async fn export(settings: &Settings, args: crate::cli::ExportArgs) -> CmdResult {
    let req = SubjectRequest {
        email: args.email,
        contact_id: args.contact_id,
        external_id: args.external_id,
        dry_run: false,
        local_only: args.local_only,
    };
    let doc = target(settings)?.run(Export(req)).await?;
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

async fn export_messages(settings: &Settings, args: crate::cli::ExportMessagesArgs, json_out: bool) -> CmdResult {
    use ops::workspace::{ExportProgress, MessageExportRequest, RecordMessageExport};
    let now = crate::timefmt::now_ms();
    let bound = |v: &Option<String>, default: i64| -> Result<i64, Failure> {
        match v {
            None => Ok(default),
            Some(s) => crate::timefmt::parse_time_bound(s, now)
                .map(|ms| ms / 1000)
                .map_err(|e| Failure::new(2, e)),
        }
    };
    let (since, until) = (bound(&args.since, 0)?, bound(&args.until, now / 1000)?);
    let poll = crate::timefmt::parse_duration(&args.poll_interval).map_err(|e| Failure::new(2, e))?;
    // The audit log must be reachable before Intercom is asked for anything
    // (through a running server: try it once).
    let audit = target(settings)?;
    if let Target::Remote(_) = &audit {
        audit.run(Stats).await?;
    }
    let record = |job: &str, status: &str, bytes: u64| RecordMessageExport {
        job: job.to_string(),
        since: args.since.as_ref().map(|_| since),
        until: args.since.as_ref().map(|_| until),
        status: status.to_string(),
        bytes,
    };
    if args.cancel {
        let job = args.job.clone().unwrap_or_default();
        let done = ops::workspace::cancel_message_export(settings, &job).await?;
        audit.run(record(&job, &done.status, 0)).await?;
        print_doc(&done, json_out, |d| {
            format!("export job {} {}", s(&d["job"]), s(&d["status"]))
        });
        return Ok(());
    }
    let out = args.out.clone().unwrap_or_default();
    let cannot = |e: std::io::Error| Failure::new(1, format!("cannot write {}: {e}", out.display()));
    let (file, dest) = crate::fsutil::create_out(&out, args.force).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => Failure::new(2, format!("--out {}: {e}", out.display())),
        _ => cannot(e),
    })?;
    let req = MessageExportRequest {
        since,
        until,
        job: args.job.clone(),
        poll,
    };
    let bar = std::io::stderr()
        .is_terminal()
        .then(indicatif::ProgressBar::new_spinner);
    let mut shown = |p: ExportProgress<'_>| match p {
        // Always said, so an interrupted export can be resumed.
        ExportProgress::Started(job) => eprintln!("export job {job}: resume with --job {job} if interrupted"),
        ExportProgress::Waiting(status, polls) => {
            if let Some(b) = &bar {
                b.set_message(format!("Intercom is preparing the export ({status}, {polls} polls)"));
                b.tick();
            }
        }
        ExportProgress::Downloaded(n) => {
            if let Some(b) = &bar {
                b.set_message(format!("downloaded {n} bytes"));
                b.tick();
            }
        }
    };
    let mut w = std::io::BufWriter::new(file);
    let done = ops::workspace::export_messages(settings, &req, &mut w, &mut shown).await?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let file = w.into_inner().map_err(|e| cannot(e.into_error()))?;
    dest.finish(file).map_err(cannot)?;
    audit.run(record(&done.job, &done.status, done.bytes)).await?;
    let mut doc = serde_json::to_value(&done).unwrap_or_default();
    doc["out"] = json!(out.display().to_string());
    print_doc(&doc, json_out, |d| {
        format!(
            "{} bytes of message data (gzipped CSV) written to {}",
            d["bytes"],
            s(&d["out"])
        )
    });
    Ok(())
}

fn s(v: &serde_json::Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

async fn backup(settings: &Settings, out: &std::path::Path, force: bool, json_out: bool) -> CmdResult {
    let cannot = |e: std::io::Error| Failure::new(1, format!("cannot write {}: {e}", out.display()));
    let (file, dest) = crate::fsutil::create_out(out, force).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => Failure::new(2, format!("--out {}: {e}", out.display())),
        _ => cannot(e),
    })?;
    let (result, file) = ops::data_dir::backup(&target(settings)?, file).await?;
    dest.finish(file).map_err(cannot)?;
    let mut doc = serde_json::to_value(&result).unwrap_or_default();
    doc["out"] = json!(out.display().to_string());
    print_doc(&doc, json_out, |d| {
        format!("backup written to {}", d["out"].as_str().unwrap_or(""))
    });
    Ok(())
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
