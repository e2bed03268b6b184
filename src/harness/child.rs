//! Server child processes for `bench` and `torture`: start this binary's
//! `serve` on a free port, read its address, measure it, stop or kill it.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// A server child process.
pub struct ServerProcess {
    child: Child,
    pub url: String,
    /// `http://addr/metrics`.
    pub metrics_url: String,
    /// Every line the server wrote to stderr so far (its log).
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ServerProcess {
    /// Starts `exe serve` on 127.0.0.1:0 and waits until it listens.
    pub async fn start(
        exe: &Path,
        data_dir: &Path,
        relay: &str,
        extra: &[&str],
    ) -> Result<ServerProcess, Error> {
        Self::start_with(Command::new(exe), data_dir, relay, extra).await
    }

    /// As `start`, with a prepared command (a wrapper such as faketime, with
    /// the mailspool binary as its last argument).
    pub async fn start_with(
        mut command: Command,
        data_dir: &Path,
        relay: &str,
        extra: &[&str],
    ) -> Result<ServerProcess, Error> {
        command.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ]);
        // "": the relays come from a --config file.
        if !relay.is_empty() {
            command.args(["--relay", relay, "--relay-tls", "none"]);
        }
        let mut child = command
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env("MAILSPOOL_LOG_LEVEL", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let mut lines = BufReader::new(child.stderr.take().ok_or("no stderr")?).lines();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (addr, metrics_url) = loop {
            match lines.next_line().await? {
                Some(line) => {
                    log.lock().expect("log").push(line.clone());
                    if let Some(rest) = line.strip_prefix("mailspool listening on ") {
                        let addr = rest.split_whitespace().next().unwrap_or_default();
                        let metrics = rest
                            .split_once("metrics on ")
                            .map(|(_, m)| m.trim_end_matches(')'))
                            .unwrap_or_default();
                        break (addr.to_string(), metrics.to_string());
                    }
                }
                None => {
                    let log = log.lock().expect("log");
                    let tail = log[log.len().saturating_sub(5)..].join(" | ");
                    return Err(format!("the server exited before listening: {tail}").into());
                }
            }
        };
        let sink = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().expect("log").push(line);
            }
        });
        Ok(ServerProcess {
            child,
            log,
            url: format!("http://{addr}"),
            metrics_url,
        })
    }

    /// The server's log lines so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().expect("log").clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.pid())
    }

    /// (peak RSS bytes, bytes written to storage) from /proc.
    pub fn resources(&self) -> (u64, u64) {
        let pid = self.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let hwm = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024;
        let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
        let written = io
            .lines()
            .find_map(|l| l.strip_prefix("write_bytes:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        (hwm, written)
    }

    pub async fn stop(mut self) -> Result<(), Error> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await??;
        if !status.success() {
            return Err(format!("server exited with {status}").into());
        }
        Ok(())
    }

    /// Waits up to `within` for the server to exit by itself; its status.
    pub async fn exited(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(within, self.child.wait())
            .await
            .ok()
            .and_then(|r| r.ok())
    }

    /// SIGKILL: a crash at an arbitrary instant.
    pub async fn kill(mut self) -> Result<(), Error> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }
}

/// User + system CPU seconds of a process, all threads (/proc/pid/stat).
pub fn cpu_seconds(pid: u32) -> f64 {
    stat_cpu(pid, false)
}

/// As [`cpu_seconds`], plus the children it has waited for.
pub fn cpu_seconds_with_children(pid: u32) -> f64 {
    stat_cpu(pid, true)
}

fn stat_cpu(pid: u32, children: bool) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the `(comm)`, which may contain spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15: 12 and 13 after the comm;
    // cutime and cstime follow.
    let own = ticks(11) + ticks(12);
    if children {
        (own + ticks(13) + ticks(14)) / hz
    } else {
        own / hz
    }
}
