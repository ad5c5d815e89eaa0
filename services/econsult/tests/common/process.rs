//! The `econsult` binary as a child process, for tests of the process as a whole.
#![allow(dead_code)]

use super::free_port;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// A running `econsult serve` process on loopback ports, killed when dropped.
pub struct Proc {
    pub child: Child,
    pub port: u16,
    pub metrics_port: u16,
}

impl Proc {
    /// Starts the binary with data in `dir`, the `extra` serve arguments and the failpoint.
    pub fn spawn(dir: &Path, extra: &[String], failpoint: Option<&str>) -> Self {
        Self::spawn_with_env(dir, extra, failpoint, &[])
    }

    /// [`Proc::spawn`] with environment variables set (after `RUST_LOG=info`, so they win).
    pub fn spawn_with_env(
        dir: &Path,
        extra: &[String],
        failpoint: Option<&str>,
        env: &[(&str, &str)],
    ) -> Self {
        let (port, metrics_port) = (free_port(), free_port());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("server.log"))
            .expect("log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_econsult"));
        cmd.arg("--data-dir")
            .arg(dir)
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--metrics-listen")
            .arg(format!("127.0.0.1:{metrics_port}"))
            .arg("--shutdown-grace-seconds")
            .arg("5")
            .args(extra)
            .env_remove("ECONSULT_FAILPOINT")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(fp) = failpoint {
            cmd.env("ECONSULT_FAILPOINT", fp);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn econsult");
        Self {
            child,
            port,
            metrics_port,
        }
    }

    /// A channel to the server once its health check says SERVING.
    pub async fn channel(&self) -> Channel {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(ch) = Channel::from_shared(format!("http://127.0.0.1:{}", self.port))
                .expect("uri")
                .connect()
                .await
            {
                let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
                let serving =
                    tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
                let request = tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                };
                if let Ok(r) = health.check(request).await
                    && r.into_inner().status == serving
                {
                    return ch;
                }
            }
            assert!(Instant::now() < deadline, "server did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(Instant::now() < deadline, "process did not exit in time");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
