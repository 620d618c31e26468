//! A database of a test's own on the shared PostgreSQL server
//! (127.0.0.1:5432, trust auth), for the tests of the PostgreSQL backend.

use std::path::Path;

pub const SHARED_SERVER: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test";

pub async fn connect(conninfo: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("PostgreSQL at {conninfo} is not reachable (it was when the tests were built): {e}")
        });
    tokio::spawn(conn);
    client
}

/// A database of this test's own on the shared server, dropped at the end.
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let name = format!("iw_test_{}", hex::encode(rand::random::<[u8; 6]>()));
        connect(SHARED_SERVER)
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        TestDb { name }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&format!("host=127.0.0.1 port=5432 user=postgres dbname={}", self.name)).await
    }

    /// `pg_dump` of the database, as text, written to `to`.
    pub fn dump_to(&self, to: &Path) {
        if let Err(e) = self.try_dump_to(to) {
            panic!("{e}");
        }
    }

    /// [`TestDb::dump_to`], tried a few times: a dump fails when a purge
    /// drops a partition between pg_dump's reading the catalog and its
    /// locking the tables ("relation ... does not exist"), as it would for
    /// an operator.
    pub fn try_dump_to(&self, to: &Path) -> Result<(), String> {
        let mut last = String::new();
        for _ in 0..5 {
            let dump = std::process::Command::new("pg_dump")
                .args(["-h", "127.0.0.1", "-p", "5432", "-U", "postgres", &self.name])
                .output()
                .unwrap();
            if dump.status.success() {
                std::fs::write(to, &dump.stdout).unwrap();
                return Ok(());
            }
            last = String::from_utf8_lossy(&dump.stderr).into_owned();
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        Err(format!("pg_dump failed five times: {last}"))
    }

    pub async fn drop_now(self) {
        let _ = connect(SHARED_SERVER)
            .await
            .batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
            .await;
    }
}
