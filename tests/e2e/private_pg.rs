//! A PostgreSQL cluster of a test's own (initdb into a temporary folder,
//! its own port and socket folder, run as the `postgres` user), which the
//! test may stop and start to provoke an outage. The shared cluster on 5432
//! is never touched.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = "/usr/lib/postgresql/15/bin";

pub struct PrivatePostgres {
    dir: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

fn as_postgres(program: &str) -> Command {
    let mut command = Command::new("runuser");
    command.args(["-u", "postgres", "--", &format!("{BIN}/{program}")]);
    command
}

impl PrivatePostgres {
    /// A new cluster, running (trust authentication, no fsync: a test's data).
    pub async fn start() -> PrivatePostgres {
        let dir = std::env::temp_dir().join(format!("keyledger-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let (uid, gid) = postgres_ids();
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
        let status = as_postgres("initdb")
            .args([
                "-D",
                dir.join("data").to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "initdb failed");
        let mut cluster = PrivatePostgres {
            dir,
            port: free_port(),
            child: None,
        };
        // Another test may take the same free port first: then try another.
        for _ in 0..5 {
            if cluster.try_start().await {
                return cluster;
            }
            cluster.port = free_port();
        }
        panic!("private PostgreSQL did not start: {}", cluster.log());
    }

    /// A database URL on this cluster (the database is created by `db::connect`).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Starts the (stopped) cluster and waits until it accepts connections.
    pub async fn start_again(&mut self) {
        assert!(
            self.try_start().await,
            "private PostgreSQL did not start again: {}",
            self.log()
        );
    }

    /// Starts the cluster on its port; false if its postmaster exited (the
    /// port was taken) — a server answering on the port is not proof enough.
    async fn try_start(&mut self) -> bool {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("postgres.log"))
            .unwrap();
        let child = as_postgres("postgres")
            .args([
                "-D",
                self.dir.join("data").to_str().unwrap(),
                "-p",
                &self.port.to_string(),
                "-k",
                self.dir.to_str().unwrap(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=300",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                eprintln!("private PostgreSQL exited ({status}) on port {}", self.port);
                self.child = None;
                return false;
            }
            // Our own socket (in our folder) answers: our server is up.
            let ready = Command::new(format!("{BIN}/pg_isready"))
                .args(["-h", self.dir.to_str().unwrap(), "-p", &self.port.to_string(), "-q"])
                .status()
                .unwrap();
            if ready.success() {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "private PostgreSQL did not start: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `pg_ctl stop -m fast`: open sessions end with 57P01
    /// (terminating connection due to administrator command).
    pub fn stop(&mut self) {
        let status = as_postgres("pg_ctl")
            .args([
                "-D",
                self.dir.join("data").to_str().unwrap(),
                "-m",
                "fast",
                "-w",
                "stop",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctl stop failed: {}", self.log());
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("private PostgreSQL on port {} logged:\n{}", self.port, self.log());
        }
        if self.child.is_some() {
            let _ = as_postgres("pg_ctl")
                .args([
                    "-D",
                    self.dir.join("data").to_str().unwrap(),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").args([flag, "postgres"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}
