//! A Postfix instance of its own for the surge replay and the smarthost
//! tests: its own config directory, queue and log under a temporary folder,
//! listening on a free loopback port and relaying everything to one
//! smarthost; and a Dovecot of its own answering Postfix's SASL over TCP
//! (`DovecotAuth`). The system's Postfix and Dovecot (if any) are not
//! touched. Needs root (their daemons drop privileges) and an installed
//! Postfix (`apt-get install postfix`; Dovecot: `dovecot-core`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

type Error = Box<dyn std::error::Error + Send + Sync>;

pub struct Postfix {
    etc: PathBuf,
    log: PathBuf,
    /// The port its smtpd listens on (127.0.0.1).
    pub port: u16,
}

/// Why Postfix cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    if !Path::new("/usr/sbin/postfix").exists() || !Path::new("/etc/postfix/master.cf").exists() {
        return Some("Postfix is not installed (apt-get install postfix)".into());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("a Postfix instance of its own needs root".into());
    }
    None
}

/// Sends `n` messages of `size` bytes to the smtpd on `127.0.0.1:port`
/// with Postfix's `smtp-source` over 20 sessions (Subject `subject`, from
/// `from`, to user@example.org); returns the seconds it took.
pub async fn smtp_source(
    port: u16,
    n: usize,
    size: usize,
    subject: &str,
    from: &str,
) -> Result<f64, Error> {
    let t = std::time::Instant::now();
    let status = tokio::process::Command::new("smtp-source")
        .args(["-s", "20", "-m", &n.to_string(), "-l", &size.to_string()])
        .args(["-S", subject, "-f", from, "-t", "user@example.org"])
        .arg(format!("127.0.0.1:{port}"))
        .status()
        .await?;
    if !status.success() {
        return Err(format!("smtp-source failed: {status}").into());
    }
    Ok(t.elapsed().as_secs_f64())
}

/// master.cf from the system's, with no chroot (the queue is in a
/// temporary folder) and smtpd on `127.0.0.1:port`.
fn master_cf(system: &str, port: u16) -> String {
    let mut out = String::new();
    for line in system.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let service = !line.starts_with(|c: char| c == '#' || c.is_whitespace());
        if service && fields.len() >= 8 {
            let name = format!("127.0.0.1:{port}");
            let mut f = fields;
            f[4] = "n";
            if f[0] == "smtp" && f[1] == "inet" {
                f[0] = &name;
            }
            out.push_str(&f.join(" "));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

impl Postfix {
    /// Starts an instance under `dir` that relays to `127.0.0.1:relay_port`
    /// over `concurrency` connections, and waits until it accepts SMTP.
    pub fn start(dir: &Path, relay_port: u16, concurrency: usize) -> Result<Postfix, Error> {
        Self::start_with(dir, relay_port, concurrency, "")
    }

    /// As `start`, with more main.cf settings after the defaults (a
    /// setting given again there wins: TLS, SASL, restrictions).
    pub fn start_with(
        dir: &Path,
        relay_port: u16,
        concurrency: usize,
        extra_main_cf: &str,
    ) -> Result<Postfix, Error> {
        let (etc, queue, data) = (dir.join("etc"), dir.join("queue"), dir.join("data"));
        for d in [&etc, &queue, &data] {
            std::fs::create_dir_all(d)?;
        }
        let chown = Command::new("chown").arg("postfix").arg(&data).status()?;
        if !chown.success() {
            return Err("chown postfix on Postfix's data directory failed".into());
        }
        let port = super::free_port()?;
        let log = dir.join("maillog");
        let main_cf = format!(
            "compatibility_level = 3.6\n\
             queue_directory = {queue}\n\
             data_directory = {data}\n\
             maillog_file = {log}\n\
             maillog_file_prefixes = {dir}\n\
             inet_interfaces = 127.0.0.1\n\
             inet_protocols = ipv4\n\
             myhostname = postfix-bench.localdomain\n\
             mydestination =\n\
             alias_maps =\n\
             alias_database =\n\
             mynetworks = 127.0.0.0/8\n\
             smtpd_relay_restrictions = permit_mynetworks, reject\n\
             relayhost = [127.0.0.1]:{relay_port}\n\
             smtp_tls_security_level = none\n\
             default_destination_concurrency_limit = {concurrency}\n\
             smtp_destination_concurrency_limit = {concurrency}\n",
            queue = queue.display(),
            data = data.display(),
            log = log.display(),
            dir = dir.display(),
        ) + extra_main_cf;
        std::fs::write(etc.join("main.cf"), main_cf)?;
        let system = std::fs::read_to_string("/etc/postfix/master.cf")?;
        std::fs::write(etc.join("master.cf"), master_cf(&system, port))?;
        let out = Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(&etc)
            .arg("start")
            .output()?;
        let pf = Postfix { etc, log, port };
        if !out.status.success() {
            return Err(format!("postfix start failed: {}", pf.log_tail()).into());
        }
        if !super::listening(port, Duration::from_secs(20)) {
            return Err(format!("Postfix did not listen within 20 s: {}", pf.log_tail()).into());
        }
        Ok(pf)
    }

    /// Messages in its queue now (`postqueue -j`: one line each).
    pub fn queued(&self) -> Option<u64> {
        let out = Command::new("/usr/sbin/postqueue")
            .arg("-c")
            .arg(&self.etc)
            .arg("-j")
            .output()
            .ok()?;
        out.status.success().then(|| {
            out.stdout
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .count() as u64
        })
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of its log, for an error message.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(3)..].join(" | ")
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(&self.etc)
            .arg("stop")
            .output();
    }
}

/// Dovecot's authentication service alone, on a loopback TCP port, with
/// one user: what Postfix's `smtpd_sasl_type = dovecot` asks.
pub struct DovecotAuth {
    conf: PathBuf,
    /// Postfix's `smtpd_sasl_path = inet:127.0.0.1:<port>`.
    pub port: u16,
}

/// Why Dovecot cannot run here, if it cannot.
pub fn dovecot_unavailable() -> Option<String> {
    if !Path::new("/usr/sbin/dovecot").exists() {
        return Some("Dovecot is not installed (apt-get install dovecot-core)".into());
    }
    unavailable()
}

impl DovecotAuth {
    pub fn start(dir: &Path, user: &str, password: &str) -> Result<DovecotAuth, Error> {
        let (run, state) = (dir.join("run"), dir.join("state"));
        for d in [&run, &state] {
            std::fs::create_dir_all(d)?;
        }
        let users = dir.join("users");
        std::fs::write(&users, format!("{user}:{{PLAIN}}{password}\n"))?;
        let port = super::free_port()?;
        let conf = dir.join("dovecot.conf");
        std::fs::write(
            &conf,
            format!(
                "base_dir = {run}\nstate_dir = {state}\nlog_path = {log}\n\
                 protocols =\nssl = no\nlisten = 127.0.0.1\n\
                 auth_mechanisms = plain login\n\
                 passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN username_format=%u {users}\n}}\n\
                 userdb {{\n  driver = static\n  args = uid=nobody gid=nogroup home=/nonexistent\n}}\n\
                 service auth {{\n  inet_listener {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n}}\n",
                run = run.display(),
                state = state.display(),
                log = dir.join("dovecot.log").display(),
                users = users.display(),
            ),
        )?;
        // The daemon keeps inherited pipes open: no output() here.
        let started = Command::new("/usr/sbin/dovecot")
            .arg("-c")
            .arg(&conf)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()?;
        let auth = DovecotAuth { conf, port };
        if !started.success() {
            let log = std::fs::read_to_string(dir.join("dovecot.log")).unwrap_or_default();
            return Err(format!("dovecot did not start: {}", log.trim()).into());
        }
        if !super::listening(port, Duration::from_secs(20)) {
            return Err("Dovecot's auth service did not listen within 20 s".into());
        }
        Ok(auth)
    }
}

impl Drop for DovecotAuth {
    fn drop(&mut self) {
        let _ = Command::new("/usr/sbin/dovecot")
            .arg("-c")
            .arg(&self.conf)
            .arg("stop")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

#[cfg(test)]
mod tests {
    use super::master_cf;

    #[test]
    fn master_cf_moves_smtpd_to_the_port_and_drops_chroot() {
        let system = "# comment\nsmtp      inet  n       -       y       -       -       smtpd\n\
                      pickup    unix  n       -       y       60      1       pickup\n  -o x=y\n";
        let m = master_cf(system, 2599);
        assert!(m.contains("127.0.0.1:2599 inet n - n - - smtpd"), "{m}");
        assert!(m.contains("pickup unix n - n 60 1 pickup"), "{m}");
        assert!(m.contains("# comment") && m.contains("  -o x=y"), "{m}");
    }
}
