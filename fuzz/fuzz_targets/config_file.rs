//! A config file, whatever its text: loaded the way `--config FILE` is,
//! with the environment a server needs. It loads or it gives an error
//! naming the file; nothing panics.
#![no_main]

use clap::Parser;
use intercom_webhooks::cli::Cli;
use intercom_webhooks::config::{Env, ServeFlags, Settings};
use libfuzzer_sys::fuzz_target;

struct FixedEnv;

impl Env for FixedEnv {
    fn var(&self, name: &str) -> Option<String> {
        match name {
            "INTERCOM_CLIENT_SECRET" => Some("fuzz-client-secret".into()),
            "INTERCOM_WEBHOOKS_ADMIN_TOKEN" => Some("fuzz-admin-token-0001".into()),
            _ => None,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
    let path = file.path().to_str().unwrap().to_string();
    let cli = Cli::parse_from(["intercom-webhooks", "--config", &path, "config", "check"]);
    match Settings::load(&cli, &ServeFlags::default(), &FixedEnv) {
        Ok(settings) => {
            let _ = settings.describe();
        }
        Err(e) => assert!(e.to_string().contains(&path), "{e}"),
    }
});
