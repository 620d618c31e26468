//! Entry point: parse the command line, load settings, start logging, run
//! the command, map the outcome to an exit code (0 ok, 1 failed, 2 bad
//! usage or configuration, 3 not found).

use clap::Parser;
use tokio_util::sync::CancellationToken;

use intercom_webhooks::cli::{Cli, Command};
use intercom_webhooks::config::{ProcessEnv, ServeFlags, Settings};
use intercom_webhooks::{app, commands, logging};

// sled clones tree nodes on every write and the store is allocation-heavy:
// mimalloc cut glibc malloc's share of the CPU at full load (see README).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // Everything this process writes is its owner's only (log segments,
    // sled's files, exports, backups), whatever umask it was started with:
    // the bits already masked stay masked.
    let mask = rustix::fs::Mode::from_raw_mode(0o077);
    rustix::process::umask(rustix::process::umask(mask) | mask);
    let cli = Cli::parse();
    let serve_flags = match &cli.command {
        Command::Serve(a) => ServeFlags {
            listen: a.listen.clone(),
            admin_listen: a.admin_listen.clone(),
        },
        _ => ServeFlags::default(),
    };
    let settings = match Settings::load(&cli, &serve_flags, &ProcessEnv) {
        Ok(s) => s,
        Err(e) => exit(2, &e.to_string()),
    };
    // Operator commands print their results; only warnings go to stderr.
    let default_level = if matches!(cli.command, Command::Serve(_)) {
        "info"
    } else {
        "warn"
    };
    logging::init(settings.log_format, default_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => exit(1, &format!("cannot start the async runtime: {e}")),
    };
    let code = runtime.block_on(async move {
        if matches!(cli.command, Command::Serve(_)) {
            serve(settings).await
        } else {
            match commands::run(cli, settings).await {
                Ok(()) => 0,
                Err(f) => {
                    eprintln!("error: {}", f.message);
                    f.code
                }
            }
        }
    });
    std::process::exit(code);
}

fn exit(code: i32, message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(code);
}

async fn serve(settings: Settings) -> i32 {
    if let Err(e) = settings.require_client_secret() {
        eprintln!("error: {e}");
        return 2;
    }
    let bind = |addr, flag: &'static str| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr} ({flag}): {e}"))
    };
    let listeners = match (
        bind(settings.listen, "--listen").await,
        bind(settings.admin_listen, "--admin-listen").await,
    ) {
        (Ok(public), Ok(admin)) => app::Listeners { public, admin },
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_listener(shutdown.clone()));
    match app::run(settings, listeners, shutdown).await {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %e, "Server stopped with an error.");
            eprintln!("error: {e:#}");
            1
        }
    }
}

async fn signal_listener(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                shutdown.cancel();
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("Signal received.");
    shutdown.cancel();
}
