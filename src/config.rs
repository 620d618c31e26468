//! Settings, loaded in layers and validated once: built-in defaults, then the
//! TOML file, then the environment, then flags. Nothing reads the environment
//! after start-up. Errors name the flag, variable or file at fault; `main`
//! turns them into exit code 2.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cli::{Cli, LogFormat, Region};
use crate::secret::Secret;
use crate::timefmt::parse_duration;

/// Intercom REST API version we pin (facts.md §4.1).
pub const INTERCOM_API_VERSION: &str = "2.14";

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// The validated settings every command runs on.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub admin_url: String,
    pub region: Region,
    /// REST base URL: the region's, or `INTERCOM_API_BASE_URL`.
    pub api_base_url: String,
    /// Client secrets that may sign webhooks (more than one while rotating).
    pub client_secrets: Vec<Secret>,
    pub access_token: Option<Secret>,
    pub admin_token: Option<Secret>,
    /// The data key as given (hex or base64); `None` means the key file.
    pub data_key: Option<Secret>,
    /// The key `rotate-data-key` re-wraps the store under.
    pub new_data_key: Option<Secret>,
    pub http: HttpSettings,
    pub retention: Retention,
    pub purge: PurgeSettings,
    pub cache: CacheSettings,
    pub worker: WorkerSettings,
    pub store: StoreSettings,
    pub admin: AdminSettings,
    /// How often a running server reconciles with Intercom's API (`None`:
    /// never; `[reconcile] interval`, off by default).
    pub reconcile_interval: Option<Duration>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HttpSettings {
    /// Largest accepted webhook body, in bytes.
    pub body_limit: usize,
    /// Time a client has to send its request headers.
    #[serde(with = "humantime_serde_compat")]
    pub header_timeout: Duration,
    /// Time a client has to send its body once the headers are in.
    #[serde(with = "humantime_serde_compat")]
    pub body_timeout: Duration,
    /// How long shutdown waits for in-flight requests.
    #[serde(with = "humantime_serde_compat")]
    pub shutdown_grace: Duration,
    /// Failed signature checks allowed per source address per minute before
    /// further failures are answered `429` (valid requests are never limited).
    pub bad_signatures_per_minute: u32,
    /// Proxies whose `X-Forwarded-For` is believed (see
    /// `netaddr::client_ip`); from anyone else the header is ignored.
    pub trusted_proxies: Vec<crate::netaddr::Cidr>,
    /// Connections the public listener serves at once; beyond it a new one
    /// waits up to `busy_wait` for room, then gets `503`.
    pub max_connections: usize,
    /// Bytes of not-yet-verified bodies held at once (reserved by each
    /// request's declared length, or `body_limit` when it declares none).
    /// A quarter is kept for bodies of at most [`SMALL_BODY`] bytes (every
    /// notification Intercom sends), so large slow bodies cannot crowd
    /// them out. Beyond it a request waits up to `busy_wait`, then `503`.
    pub max_unverified_bytes: usize,
    #[serde(with = "humantime_serde_compat")]
    pub busy_wait: Duration,
}

/// Bodies up to this size draw on the reserve for small bodies.
pub const SMALL_BODY: usize = 64 * 1024;

#[derive(Debug, Clone, Serialize)]
pub struct Retention {
    #[serde(with = "humantime_serde_compat")]
    pub events: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub contacts: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub conversations: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub tombstones: Duration,
    /// Dedup markers outlive the payloads they stand for, so that a late
    /// re-delivery is still recognised.
    #[serde(with = "humantime_serde_compat")]
    pub markers: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub audit: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct PurgeSettings {
    #[serde(with = "humantime_serde_compat")]
    pub interval: Duration,
    /// Keys deleted per sled batch, so intake is never held back for long.
    pub batch_size: usize,
    /// Log segments holding records erased by `contact.deleted` webhooks
    /// are rewritten without them in one pass for many erasures: once no
    /// erasure has been queued for `shred_quiet`, or once the oldest has
    /// waited `shred_interval`, whichever comes first. Operator erasures
    /// shred at once.
    #[serde(with = "humantime_serde_compat")]
    pub shred_interval: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub shred_quiet: Duration,
}

/// `[purge] shred_bytes_per_second`: how fast a shred pass reads and
/// writes (see `docs/performance.md` for what faster costs intake).
pub const DEFAULT_SHRED_BYTES_PER_SECOND: u64 = 48 * 1024 * 1024;

#[derive(Debug, Clone, Serialize)]
pub struct CacheSettings {
    /// Custom attribute names kept (encrypted) in cached contacts.
    pub contact_custom_attributes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkerSettings {
    pub concurrency: usize,
    pub max_attempts: u32,
    #[serde(with = "humantime_serde_compat")]
    pub backoff_base: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub backoff_max: Duration,
    /// While the receiver is saturated, handlers pause so that intake gets
    /// the CPU, for at most this long per event (zero: never pause).
    #[serde(with = "humantime_serde_compat")]
    pub yield_to_intake: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct AdminSettings {
    /// Failed admin authentications allowed per source address per minute;
    /// past it that source gets `429`. A correct token is never limited.
    pub failed_auth_per_minute: u32,
    /// Connections the admin listener serves at once; beyond it a new one
    /// waits up to `[server] busy_wait` for room, then gets `503`. (Bodies
    /// there are small and bounded in time: see `http::admin::bounded_body`.)
    pub max_connections: usize,
    /// A console session ends after this long without a request...
    #[serde(with = "humantime_serde_compat")]
    pub session_idle: Duration,
    /// ...and this long after sign-in, whatever happens.
    #[serde(with = "humantime_serde_compat")]
    pub session_max: Duration,
}

pub use crate::store::StoreSettings;
use crate::timefmt::humantime_serde_compat;

// ---- the file layer -------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    log_format: Option<LogFormat>,
    #[serde(default)]
    server: FileServer,
    #[serde(default)]
    intercom: FileIntercom,
    #[serde(default)]
    retention: FileRetention,
    #[serde(default)]
    purge: FilePurge,
    #[serde(default)]
    reconcile: FileReconcile,
    #[serde(default)]
    cache: FileCache,
    #[serde(default)]
    worker: FileWorker,
    #[serde(default)]
    store: FileStore,
    #[serde(default)]
    admin: FileAdmin,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileServer {
    listen: Option<String>,
    admin_listen: Option<String>,
    admin_url: Option<String>,
    body_limit_bytes: Option<usize>,
    header_timeout: Option<String>,
    body_timeout: Option<String>,
    shutdown_grace: Option<String>,
    bad_signatures_per_minute: Option<u32>,
    trust_forwarded_for: Option<bool>,
    trusted_proxies: Option<Vec<String>>,
    max_connections: Option<usize>,
    max_unverified_bytes: Option<usize>,
    busy_wait: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileIntercom {
    region: Option<Region>,
    api_base_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRetention {
    events: Option<String>,
    contacts: Option<String>,
    conversations: Option<String>,
    tombstones: Option<String>,
    markers: Option<String>,
    audit: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileReconcile {
    interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePurge {
    interval: Option<String>,
    batch_size: Option<usize>,
    shred_interval: Option<String>,
    shred_quiet: Option<String>,
    shred_bytes_per_second: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCache {
    #[serde(default)]
    contacts: FileCacheContacts,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCacheContacts {
    custom_attributes: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWorker {
    concurrency: Option<usize>,
    max_attempts: Option<u32>,
    backoff_base: Option<String>,
    backoff_max: Option<String>,
    yield_to_intake: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileStore {
    segment_max_bytes: Option<u64>,
    segment_max_age: Option<String>,
    min_free_bytes: Option<u64>,
    /// `embedded` (default) or `postgres`.
    backend: Option<String>,
    pool_size: Option<usize>,
    partition: Option<String>,
    claim_lease: Option<String>,
    commit_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAdmin {
    failed_auth_per_minute: Option<u32>,
    max_connections: Option<usize>,
    session_idle: Option<String>,
    session_max: Option<String>,
    /// Accepted from older config files and ignored: a correct token is no
    /// longer rate-limited (one shared limit let strangers lock the
    /// operator out).
    #[allow(dead_code)]
    requests_per_second: Option<u32>,
}

/// Where secrets come from: the environment (tests pass their own map).
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

/// Serve-only flags, passed in when the command is `serve`.
#[derive(Debug, Default)]
pub struct ServeFlags {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
}

impl ServeFlags {
    /// The serve-only flags of `cli`, if its command is `serve`.
    pub fn of(cli: &Cli) -> ServeFlags {
        match &cli.command {
            crate::cli::Command::Serve(a) => ServeFlags {
                listen: a.listen.clone(),
                admin_listen: a.admin_listen.clone(),
            },
            _ => ServeFlags::default(),
        }
    }
}

impl Settings {
    /// Builds the settings from the parsed command line, the file it names
    /// and the environment.
    pub fn load(cli: &Cli, serve: &ServeFlags, env: &dyn Env) -> Result<Settings, ConfigError> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let cfg_name = cli.config.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        let dur = |value: Option<&String>, key: &str, default: &str| -> Result<Duration, ConfigError> {
            match value {
                Some(v) => parse_duration(v).map_err(|e| ConfigError(format!("{cfg_name}: {key}: {e}"))),
                None => Ok(parse_duration(default).expect("built-in default parses")),
            }
        };

        // A bad value is named where it came from: the flag (or its
        // variable) when given, else the file's key.
        let from = |flag: Option<&String>, flag_name: &str, key: &str| match flag {
            Some(_) => flag_name.to_string(),
            None => format!("{cfg_name}: {key}"),
        };
        let listen = addr(
            serve.listen.as_ref().or(file.server.listen.as_ref()),
            "127.0.0.1:8080",
            &from(
                serve.listen.as_ref(),
                "--listen / INTERCOM_WEBHOOKS_LISTEN",
                "server.listen",
            ),
        )?;
        let admin_listen = addr(
            serve.admin_listen.as_ref().or(file.server.admin_listen.as_ref()),
            "127.0.0.1:9090",
            &from(
                serve.admin_listen.as_ref(),
                "--admin-listen / INTERCOM_WEBHOOKS_ADMIN_LISTEN",
                "server.admin_listen",
            ),
        )?;
        let region = cli.region.or(file.intercom.region).unwrap_or(Region::Us);
        let api_base_url = cli
            .api_base_url
            .clone()
            .or(file.intercom.api_base_url.clone())
            .unwrap_or_else(|| region.base_url().to_string())
            .trim_end_matches('/')
            .to_string();
        if !base_url_allowed(&api_base_url) {
            let name = from(
                cli.api_base_url.as_ref(),
                "INTERCOM_API_BASE_URL",
                "intercom.api_base_url",
            );
            return err(format!(
                "{name} must be https:// (http:// only to a loopback address: the access token must not cross a network in clear)"
            ));
        }

        let client_secrets = match secret_var(env, "INTERCOM_CLIENT_SECRET")? {
            Some(list) => {
                let secrets: Vec<Secret> = list
                    .expose()
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(Secret::new)
                    .collect();
                if secrets.is_empty() {
                    return err("INTERCOM_CLIENT_SECRET is set but holds no secret");
                }
                secrets
            }
            None => Vec::new(),
        };

        let http = HttpSettings {
            body_limit: file.server.body_limit_bytes.unwrap_or(2 * 1024 * 1024),
            header_timeout: dur(file.server.header_timeout.as_ref(), "server.header_timeout", "10s")?,
            body_timeout: dur(file.server.body_timeout.as_ref(), "server.body_timeout", "10s")?,
            shutdown_grace: dur(file.server.shutdown_grace.as_ref(), "server.shutdown_grace", "20s")?,
            bad_signatures_per_minute: file.server.bad_signatures_per_minute.unwrap_or(60),
            trusted_proxies: match &file.server.trusted_proxies {
                None => Vec::new(),
                Some(list) => {
                    let mut out = Vec::new();
                    for p in list {
                        match crate::netaddr::Cidr::parse(p) {
                            Some(c) => out.push(c),
                            None => {
                                return err(format!(
                                    "{cfg_name}: server.trusted_proxies: '{p}' is not an address or a CIDR range"
                                ))
                            }
                        }
                    }
                    out
                }
            },
            max_connections: file.server.max_connections.unwrap_or(2048),
            max_unverified_bytes: file.server.max_unverified_bytes.unwrap_or(128 * 1024 * 1024),
            busy_wait: dur(file.server.busy_wait.as_ref(), "server.busy_wait", "1s")?,
        };
        if file.server.trust_forwarded_for == Some(true) && http.trusted_proxies.is_empty() {
            return err(format!(
                "{cfg_name}: server.trust_forwarded_for believed X-Forwarded-For from anyone; list the proxies it comes from in server.trusted_proxies instead"
            ));
        }
        if http.max_connections == 0 {
            return err(format!("{cfg_name}: server.max_connections must be at least 1"));
        }
        if http.max_unverified_bytes < 4 * http.body_limit {
            return err(format!(
                "{cfg_name}: server.max_unverified_bytes ({}) must hold at least four bodies of server.body_limit_bytes ({})",
                http.max_unverified_bytes, http.body_limit
            ));
        }
        if http.body_limit < 1024 {
            return err(format!("{cfg_name}: server.body_limit_bytes must be at least 1024"));
        }
        if http.bad_signatures_per_minute == 0 {
            return err(format!(
                "{cfg_name}: server.bad_signatures_per_minute must be at least 1"
            ));
        }

        let r = &file.retention;
        let retention = Retention {
            events: dur(r.events.as_ref(), "retention.events", "30d")?,
            contacts: dur(r.contacts.as_ref(), "retention.contacts", "30d")?,
            conversations: dur(r.conversations.as_ref(), "retention.conversations", "90d")?,
            tombstones: dur(r.tombstones.as_ref(), "retention.tombstones", "400d")?,
            markers: dur(r.markers.as_ref(), "retention.markers", "60d")?,
            audit: dur(r.audit.as_ref(), "retention.audit", "7y")?,
        };
        if retention.markers < retention.events {
            return err(format!(
                "{cfg_name}: retention.markers must be at least retention.events, so a re-delivery after purge is still a duplicate"
            ));
        }

        let purge = PurgeSettings {
            interval: dur(file.purge.interval.as_ref(), "purge.interval", "1h")?,
            batch_size: file.purge.batch_size.unwrap_or(500).max(1),
            shred_interval: dur(file.purge.shred_interval.as_ref(), "purge.shred_interval", "5m")?,
            shred_quiet: dur(file.purge.shred_quiet.as_ref(), "purge.shred_quiet", "10s")?,
        };
        let worker = WorkerSettings {
            concurrency: file
                .worker
                .concurrency
                .unwrap_or_else(|| {
                    // Against a database a handler mostly waits on round
                    // trips: more threads keep it busy. Each takes batches
                    // of up to 64 events; past 8 threads more only took the
                    // CPU from intake (docs/performance.md).
                    if file.store.backend.as_deref() == Some("postgres") {
                        8
                    } else {
                        default_worker_concurrency()
                    }
                })
                .clamp(1, 64),
            max_attempts: file.worker.max_attempts.unwrap_or(8).max(1),
            backoff_base: dur(file.worker.backoff_base.as_ref(), "worker.backoff_base", "1s")?,
            backoff_max: dur(file.worker.backoff_max.as_ref(), "worker.backoff_max", "10m")?,
            yield_to_intake: dur(file.worker.yield_to_intake.as_ref(), "worker.yield_to_intake", "30s")?,
        };
        let postgres = match file.store.backend.as_deref().unwrap_or("embedded") {
            "embedded" => None,
            "postgres" => {
                let url = match cli.database_url.clone() {
                    Some(u) => u,
                    None => match secret_var(env, "INTERCOM_WEBHOOKS_DATABASE_URL")? {
                        Some(s) => s.expose().to_string(),
                        None => {
                            return err(format!(
                                "{cfg_name}: store.backend = \"postgres\" needs INTERCOM_WEBHOOKS_DATABASE_URL (or _FILE, or --database-url)"
                            ))
                        }
                    },
                };
                let pg = crate::store::PostgresSettings {
                    url,
                    pool_size: file.store.pool_size.unwrap_or(16).clamp(2, 256),
                    partition: dur(file.store.partition.as_ref(), "store.partition", "1d")?,
                    claim_lease: dur(file.store.claim_lease.as_ref(), "store.claim_lease", "2m")?,
                    commit_timeout: dur(file.store.commit_timeout.as_ref(), "store.commit_timeout", "4s")?,
                };
                if pg.partition < Duration::from_secs(1)
                    || pg.claim_lease < Duration::from_secs(1)
                    || pg.commit_timeout.is_zero()
                {
                    return err(format!(
                        "{cfg_name}: store.partition and store.claim_lease must be at least 1s, store.commit_timeout above zero"
                    ));
                }
                Some(pg)
            }
            other => {
                return err(format!(
                    "{cfg_name}: store.backend is \"embedded\" or \"postgres\", not \"{other}\""
                ))
            }
        };
        let store = StoreSettings {
            postgres,
            segment_max_bytes: file.store.segment_max_bytes.unwrap_or(64 * 1024 * 1024).max(4096),
            segment_max_age: dur(file.store.segment_max_age.as_ref(), "store.segment_max_age", "1h")?,
            min_free_bytes: file.store.min_free_bytes.unwrap_or(64 * 1024 * 1024),
            shred_bytes_per_second: file
                .purge
                .shred_bytes_per_second
                .unwrap_or(DEFAULT_SHRED_BYTES_PER_SECOND),
        };
        // A body must fit one intake log record (with room for its
        // metadata): a larger limit would accept bodies that can only ever
        // be answered 503. (A record larger than a segment gets a segment
        // of its own.)
        let record_max = u64::from(crate::store::MAX_RECORD) - 64 * 1024;
        if http.body_limit as u64 > record_max {
            return err(format!(
                "{cfg_name}: server.body_limit_bytes ({}) is larger than one intake log record can be ({record_max})",
                http.body_limit
            ));
        }
        if purge.interval.is_zero() || purge.shred_interval.is_zero() || store.segment_max_age.is_zero() {
            return err(format!(
                "{cfg_name}: purge.interval, purge.shred_interval and store.segment_max_age must be above zero"
            ));
        }

        let admin = AdminSettings {
            failed_auth_per_minute: file.admin.failed_auth_per_minute.unwrap_or(10).max(1),
            max_connections: file.admin.max_connections.unwrap_or(256),
            session_idle: dur(file.admin.session_idle.as_ref(), "admin.session_idle", "30m")?,
            session_max: dur(file.admin.session_max.as_ref(), "admin.session_max", "12h")?,
        };
        if admin.max_connections == 0 {
            return err(format!("{cfg_name}: admin.max_connections must be at least 1"));
        }
        if admin.session_idle.is_zero() || admin.session_max.is_zero() {
            return err(format!(
                "{cfg_name}: admin.session_idle and admin.session_max must be above zero"
            ));
        }

        let reconcile_interval = match &file.reconcile.interval {
            None => None,
            Some(text) => {
                let d =
                    parse_duration(text).map_err(|e| ConfigError(format!("{cfg_name}: reconcile.interval: {e}")))?;
                if d < Duration::from_secs(60) {
                    return err(format!(
                        "{cfg_name}: reconcile.interval must be at least 1m (each run reads Intercom's API within its rate limit)"
                    ));
                }
                Some(d)
            }
        };

        Ok(Settings {
            data_dir: cli
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("./data")),
            log_format: cli.log_format.or(file.log_format).unwrap_or(LogFormat::Text),
            listen,
            admin_listen,
            admin_url: cli
                .admin_url
                .clone()
                .or(file.server.admin_url)
                .unwrap_or_else(|| format!("http://{admin_listen}"))
                .trim_end_matches('/')
                .to_string(),
            region,
            api_base_url,
            client_secrets,
            access_token: secret_var(env, "INTERCOM_ACCESS_TOKEN")?,
            admin_token: admin_token(env)?,
            data_key: secret_var(env, "INTERCOM_WEBHOOKS_DATA_KEY")?,
            new_data_key: secret_var(env, "INTERCOM_WEBHOOKS_NEW_DATA_KEY")?,
            http,
            retention,
            purge,
            cache: CacheSettings {
                contact_custom_attributes: file.cache.contacts.custom_attributes.unwrap_or_default(),
            },
            worker,
            store,
            admin,
            reconcile_interval,
        })
    }

    /// `serve` needs a client secret: without one nothing could be verified.
    pub fn require_client_secret(&self) -> Result<(), ConfigError> {
        if self.client_secrets.is_empty() {
            return err(
                "INTERCOM_CLIENT_SECRET (or INTERCOM_CLIENT_SECRET_FILE) is not set: copy the client secret from your app's Basic information page in Intercom's Developer Hub",
            );
        }
        Ok(())
    }

    /// The effective settings as `config check` prints them: secrets only
    /// say whether they are set.
    pub fn describe(&self) -> serde_json::Value {
        let set = |s: &Option<Secret>| if s.is_some() { "set" } else { "not set" };
        serde_json::json!({
            "data_dir": self.data_dir.display().to_string(),
            "log_format": self.log_format,
            "listen": self.listen.to_string(),
            "admin_listen": self.admin_listen.to_string(),
            "admin_url": self.admin_url,
            "region": self.region,
            "api_base_url": self.api_base_url,
            "api_version": INTERCOM_API_VERSION,
            "secrets": {
                "INTERCOM_CLIENT_SECRET": if self.client_secrets.is_empty() {
                    "not set".to_string()
                } else {
                    format!("set ({} value{})", self.client_secrets.len(), if self.client_secrets.len() == 1 { "" } else { "s" })
                },
                "INTERCOM_ACCESS_TOKEN": set(&self.access_token),
                "INTERCOM_WEBHOOKS_ADMIN_TOKEN": set(&self.admin_token),
                "INTERCOM_WEBHOOKS_DATA_KEY": if self.data_key.is_some() { "set" } else { "not set (key file in the data dir)" },
            },
            "server": self.http,
            "retention": self.retention,
            "purge": self.purge,
            "cache": { "contacts": { "custom_attributes": self.cache.contact_custom_attributes } },
            "worker": self.worker,
            "store": self.store,
            "admin": self.admin,
            "reconcile": { "interval": self.reconcile_interval.map(|d| humantime::format_duration(d).to_string()) },
        })
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("{}: cannot read the config file: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| {
        let msg = e.message().replace('\n', " ");
        ConfigError(format!("{}: {msg}", path.display()))
    })
}

fn addr(value: Option<&String>, default: &str, name: &str) -> Result<SocketAddr, ConfigError> {
    let text = value.map(String::as_str).unwrap_or(default);
    text.parse()
        .map_err(|_| ConfigError(format!("{name}: '{text}' is not an address such as 127.0.0.1:8080")))
}

/// A secret from `NAME`, or from the file `NAME_FILE` names.
/// The shortest admin token accepted: shorter ones are guessable.
pub const MIN_ADMIN_TOKEN: usize = 16;

/// The admin token: a blank one would turn authentication off, a short one
/// is guessable; both refuse to start.
fn admin_token(env: &dyn Env) -> Result<Option<Secret>, ConfigError> {
    let name = "INTERCOM_WEBHOOKS_ADMIN_TOKEN";
    match secret_var(env, name)? {
        Some(t) if t.expose().chars().count() < MIN_ADMIN_TOKEN => err(format!(
            "{name} (or {name}_FILE) must be at least {MIN_ADMIN_TOKEN} characters (it is shorter)"
        )),
        other => Ok(other),
    }
}

fn secret_var(env: &dyn Env, name: &str) -> Result<Option<Secret>, ConfigError> {
    if let Some(v) = env.var(name) {
        if v.trim().is_empty() {
            return err(format!(
                "{name} is set but blank (a stray space or newline?): give a value or unset it"
            ));
        }
        return Ok(Some(Secret::new(v.trim())));
    }
    let file_var = format!("{name}_FILE");
    match env.var(&file_var) {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| ConfigError(format!("{file_var}: cannot read {path}: {e}")))?;
            let text = text.trim();
            if text.is_empty() {
                return err(format!("{file_var}: {path} is empty"));
            }
            Ok(Some(Secret::new(text)))
        }
        None => Ok(None),
    }
}

/// Handler threads by default: half the cores, at least one. The other half
/// serve HTTP, the committer and the indexer; on 2 cores a second handler
/// thread only contended with them (10-20% fewer notifications/s at full
/// load) while one keeps up with intake.
fn default_worker_concurrency() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// The token only goes over TLS, but to a stand-in on this machine.
pub fn base_url_allowed(base: &str) -> bool {
    if base.starts_with("https://") {
        return true;
    }
    let Some(rest) = base.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split('/').next().unwrap_or("");
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::collections::HashMap;

    struct MapEnv(HashMap<&'static str, String>);
    impl Env for MapEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).cloned()
        }
    }

    fn cli(args: &[&str]) -> Cli {
        let mut all = vec!["intercom-webhooks"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).expect("args parse")
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let s = Settings::load(&cli(&["stats"]), &ServeFlags::default(), &MapEnv(HashMap::new())).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.admin_listen.to_string(), "127.0.0.1:9090");
        assert_eq!(s.retention.events, Duration::from_secs(30 * 86400));
        assert_eq!(s.retention.conversations, Duration::from_secs(90 * 86400));
        assert_eq!(s.api_base_url, "https://api.intercom.io");
        assert!(s.require_client_secret().is_err());
    }

    #[test]
    fn secrets_are_split_for_rotation_and_never_described() {
        let env = MapEnv(HashMap::from([(
            "INTERCOM_CLIENT_SECRET",
            "old-one, new-one".to_string(),
        )]));
        let s = Settings::load(&cli(&["stats"]), &ServeFlags::default(), &env).unwrap();
        assert_eq!(s.client_secrets.len(), 2);
        let text = s.describe().to_string();
        assert!(!text.contains("old-one") && !text.contains("new-one"));
    }

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[server]\nlisten = \"127.0.0.1:1111\"\n[retention]\nevents = \"5s\"\nmarkers = \"10s\"\n",
        )
        .unwrap();
        let c = cli(&["--config", path.to_str().unwrap(), "stats"]);
        let s = Settings::load(&c, &ServeFlags::default(), &MapEnv(HashMap::new())).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:1111");
        assert_eq!(s.retention.events, Duration::from_secs(5));
        let flags = ServeFlags {
            listen: Some("127.0.0.1:2222".into()),
            admin_listen: None,
        };
        let s = Settings::load(&c, &flags, &MapEnv(HashMap::new())).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:2222");
    }

    #[test]
    fn unknown_keys_and_bad_durations_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[retention]\nevents = \"soon\"\n").unwrap();
        let c = cli(&["--config", path.to_str().unwrap(), "stats"]);
        let e = Settings::load(&c, &ServeFlags::default(), &MapEnv(HashMap::new())).unwrap_err();
        assert!(e.0.contains("c.toml") && e.0.contains("retention.events"), "{e}");
        std::fs::write(&path, "[retention]\nevnts = \"1d\"\n").unwrap();
        let e = Settings::load(&c, &ServeFlags::default(), &MapEnv(HashMap::new())).unwrap_err();
        assert!(e.0.contains("evnts"), "{e}");
    }
}
