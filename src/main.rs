//! Entry point: parse the command line, load settings, start logging, run
//! the command, map the outcome to an exit code (0 ok, 1 failed, 2 bad
//! usage or configuration, 3 not found).

use clap::Parser;

use intercom_webhooks::cli::{Cli, Command};
use intercom_webhooks::config::{ProcessEnv, ServeFlags, Settings};
use intercom_webhooks::{app, commands, logging};

// sled clones tree nodes on every write and the store is allocation-heavy:
// mimalloc cut glibc malloc's share of the CPU at full load (see README).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    intercom_webhooks::fsutil::owner_only_umask();
    let cli = Cli::parse();
    let settings = match Settings::load(&cli, &ServeFlags::of(&cli), &ProcessEnv) {
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
            app::serve(settings).await
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
