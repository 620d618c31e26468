//! The command line: raw flags as clap parses them. `config` turns them, the
//! environment and the TOML file into validated [`crate::config::Settings`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "intercom-webhooks",
    version,
    about = "Privacy-first, durable receiver and processor for Intercom webhooks"
)]
pub struct Cli {
    /// TOML configuration file; flags and environment override it.
    #[arg(long, global = true, env = "INTERCOM_WEBHOOKS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Directory of the store and key files [default: ./data].
    #[arg(long, global = true, env = "INTERCOM_WEBHOOKS_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Format of the log lines on stderr [default: text].
    #[arg(long, global = true, env = "INTERCOM_WEBHOOKS_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// Machine-readable output: one JSON document on stdout.
    #[arg(long, global = true)]
    pub json: bool,

    /// Admin API of a running server, used when it holds the store
    /// [default: http://127.0.0.1:9090].
    #[arg(long, global = true, env = "INTERCOM_WEBHOOKS_ADMIN_URL", value_name = "URL")]
    pub admin_url: Option<String>,

    /// Intercom region for REST calls [default: us].
    #[arg(long, global = true, env = "INTERCOM_REGION", value_enum)]
    pub region: Option<Region>,

    /// Overrides the region's REST base URL (a proxy, or a local stand-in).
    #[arg(long, global = true, env = "INTERCOM_API_BASE_URL", value_name = "URL")]
    pub api_base_url: Option<String>,

    /// PostgreSQL URL for `[store] backend = "postgres"` (else from
    /// INTERCOM_WEBHOOKS_DATABASE_URL or its _FILE).
    #[arg(long, global = true, value_name = "URL")]
    pub database_url: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Region {
    Us,
    Eu,
    Au,
}

impl Region {
    pub fn base_url(self) -> &'static str {
        match self {
            Region::Us => "https://api.intercom.io",
            Region::Eu => "https://api.eu.intercom.io",
            Region::Au => "https://api.au.intercom.io",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the webhook receiver, the workers, the purger and the admin API.
    Serve(ServeArgs),
    /// List or inspect stored notifications.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Run the handlers again for stored notifications.
    Replay(ReplayArgs),
    /// Counts by status and topic, queue depth, store size, delivery health.
    Stats,
    /// Apply the retention periods now.
    Purge(PurgeArgs),
    /// Inspect or clear the data-minimised cache.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Erase a person's data in Intercom and every local copy. Needs --yes.
    Erase(EraseArgs),
    /// Data-subject access export: what Intercom and we hold about a person.
    Export(ExportArgs),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Apply the database schema's migrations (`[store] backend =
    /// "postgres"`); `serve` applies them at start too.
    Migrate,
    /// Move the embedded store in the data dir (stopped) into the empty
    /// PostgreSQL database of `[store] backend = "postgres"`.
    MigrateStore,
    /// Write a consistent copy of the store (running or stopped) to a file.
    Backup {
        #[arg(long, value_name = "FILE")]
        out: std::path::PathBuf,
        /// Replace FILE if it exists (by default an existing file or link is refused).
        #[arg(long)]
        force: bool,
    },
    /// Move the store to new keys under INTERCOM_WEBHOOKS_NEW_DATA_KEY
    /// (server stopped): nothing written afterwards opens with the old key.
    RotateDataKey {
        /// Also write the new key into the data dir's data.key (by default
        /// it is never written there; configure it instead).
        #[arg(long)]
        write_key_file: bool,
    },
    /// Load a backup into an empty data dir.
    Restore {
        #[arg(long, value_name = "FILE")]
        from: std::path::PathBuf,
        /// The erasure ledger of the data dir being replaced
        /// (`<data dir>/erasures.ledger`): erasures made after the backup are
        /// applied again, so nobody erased comes back.
        #[arg(long, value_name = "FILE", conflicts_with = "without_ledger")]
        ledger: Option<std::path::PathBuf>,
        /// Restore without a newer ledger: erasures made after the backup
        /// come back. Only when no newer ledger exists.
        #[arg(long)]
        without_ledger: bool,
    },
    /// List the workspace's data attributes (contacts, companies,
    /// conversations), mark those likely to hold personal data, and suggest
    /// a `[cache.contacts] custom_attributes` allow-list to review.
    Discover {
        /// Include archived attributes.
        #[arg(long)]
        include_archived: bool,
    },
    /// Intercom's content data export: delivery and engagement data of
    /// outbound messages sent in a date range, as gzipped CSV.
    ExportMessages(ExportMessagesArgs),
    /// Fetch from Intercom what its webhooks did not deliver (contacts and
    /// conversations changed since the last run, deletions) and process it.
    Reconcile {
        /// Start from here instead of the stored watermark (RFC 3339 time or
        /// a duration ago such as 7d).
        #[arg(long)]
        since: Option<String>,
        /// Count what would be stored, store nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Sign a realistic sample notification and post it to a receiver.
    Simulate(SimulateArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Public listener for Intercom [default: 127.0.0.1:8080].
    #[arg(long, env = "INTERCOM_WEBHOOKS_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Admin listener [default: 127.0.0.1:9090].
    #[arg(long, env = "INTERCOM_WEBHOOKS_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// List stored notifications, newest first.
    List(EventFilterArgs),
    /// One notification: metadata, history and its payload with personal data masked.
    Show {
        id: String,
        /// Print the payload unmasked, personal data included. Writes an
        /// audit entry naming the event.
        #[arg(long)]
        raw: bool,
    },
}

/// Which events: by status, topic and receipt time.
#[derive(Debug, Args, Clone, Default)]
pub struct Selection {
    /// pending, processed, skipped, retrying, failed or invalid.
    #[arg(long)]
    pub status: Option<String>,
    /// Topic glob, e.g. 'conversation.*'.
    #[arg(long)]
    pub topic: Option<String>,
    /// RFC 3339 time or a duration ago (2h).
    #[arg(long)]
    pub since: Option<String>,
    /// RFC 3339 time or a duration ago (2h).
    #[arg(long)]
    pub until: Option<String>,
}

#[derive(Debug, Args, Clone, Default)]
pub struct EventFilterArgs {
    #[command(flatten)]
    pub select: Selection,
    /// At most this many [default: 50].
    #[arg(long)]
    pub limit: Option<usize>,
    /// Continue after this cursor (from the previous page).
    #[arg(long)]
    pub after: Option<String>,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Replay these notification ids.
    #[arg(long = "id", value_name = "ID")]
    pub ids: Vec<String>,
    #[command(flatten)]
    pub select: Selection,
    /// Every stored notification.
    #[arg(long)]
    pub all: bool,
    /// Count and list what would be replayed; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct PurgeArgs {
    /// Count what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Show a cached, minimised record.
    Show { kind: CacheKind, id: String },
    /// Remove every cached record (tombstones stay). Needs --yes.
    Clear {
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CacheKind {
    Contact,
    Conversation,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("subject").required(true).args(["email", "contact_id", "external_id", "status"])))]
pub struct EraseArgs {
    #[arg(long)]
    pub email: Option<String>,
    #[arg(long)]
    pub contact_id: Option<String>,
    /// The workspace's own id for the person (`external_id`, legacy `user_id`).
    #[arg(long)]
    pub external_id: Option<String>,
    /// Say exactly what would be erased; change nothing.
    #[arg(long, conflicts_with = "yes")]
    pub dry_run: bool,
    /// Erase.
    #[arg(long)]
    pub yes: bool,
    /// Only local copies; leave Intercom alone.
    #[arg(long)]
    pub local_only: bool,
    /// List the erasure jobs (unfinished ones, and the newest finished)
    /// instead of erasing; an unfinished one is finished by `serve`.
    #[arg(long, conflicts_with_all = ["yes", "dry_run", "local_only"])]
    pub status: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("subject").required(true).args(["email", "contact_id", "external_id"])))]
pub struct ExportArgs {
    #[arg(long)]
    pub email: Option<String>,
    #[arg(long)]
    pub contact_id: Option<String>,
    /// The workspace's own id for the person (`external_id`, legacy `user_id`).
    #[arg(long)]
    pub external_id: Option<String>,
    /// Write the export here (mode 0600) instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<std::path::PathBuf>,
    /// Replace FILE if it exists (by default an existing file or link is refused).
    #[arg(long, requires = "out")]
    pub force: bool,
    /// Our copies only, without asking Intercom (needed when
    /// INTERCOM_ACCESS_TOKEN is not set: an export must not look complete
    /// when it is not).
    #[arg(long)]
    pub local_only: bool,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// The audit entries, oldest first.
    List,
    /// Check the authenticated chain; names the first bad entry and prints
    /// the head (SEQ:HASH).
    Verify {
        /// A head recorded elsewhere (logged at every append): fails if the
        /// log ends before it or the entry was rewritten.
        #[arg(long, value_name = "SEQ:HASH")]
        expect_head: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective settings, secrets hidden.
    Check,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Topic of the sample notification.
    #[arg(long, required_unless_present = "list")]
    pub topic: Option<String>,
    /// Receiver URL (default: `http://<listen>/webhooks/intercom`).
    #[arg(long)]
    pub url: Option<String>,
    /// List the topics with a sample.
    #[arg(long)]
    pub list: bool,
}

#[derive(Debug, Args)]
pub struct ExportMessagesArgs {
    /// Messages sent from (RFC 3339 time, or a duration ago such as 30d).
    #[arg(long, required_unless_present = "job")]
    pub since: Option<String>,
    /// Messages sent until (inclusive; default: now).
    #[arg(long)]
    pub until: Option<String>,
    /// Where the gzipped CSV goes (written 0600).
    #[arg(long, value_name = "FILE", required_unless_present = "cancel")]
    pub out: Option<std::path::PathBuf>,
    /// Replace FILE if it exists.
    #[arg(long)]
    pub force: bool,
    /// Resume this export job (its id is printed when it starts) instead of
    /// starting one.
    #[arg(long, value_name = "ID")]
    pub job: Option<String>,
    /// Cancel the job given with --job.
    #[arg(long, requires = "job")]
    pub cancel: bool,
    /// First wait between polls of the job; it doubles up to a minute.
    #[arg(long, default_value = "5s", value_name = "DURATION")]
    pub poll_interval: String,
}
