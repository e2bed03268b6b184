//! Compiles proto/ with a vendored protoc: no system protoc is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing reads the env concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("mailspool_descriptor.bin"))
        .build_server(true)
        .build_client(true)
        .codec_path("crate::grpc::codec::StrictCodec")
        .compile_protos(&["proto/mailspool/v1/mailspool.proto"], &["proto"])?;
    tools();
    Ok(())
}

/// Tests that need a tool of the system (Postfix's smtp-sink, FUSE,
/// libfaketime, SpamAssassin, Python's aiosmtpd and standardwebhooks, Chromium and
/// ChromeDriver, root for a tmpfs) are `#[cfg_attr(not(have_x), ignore =
/// "...")]`: where it is missing they show as ignored with the package to
/// install, never as `ok` having done nothing. Under CI=true every one is
/// on, so a missing tool fails its tests.
fn tools() {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    println!("cargo:rerun-if-env-changed=CI");
    // Directories that exist everywhere: installing a package touches them.
    for dir in ["/usr/sbin", "/usr/bin"] {
        if std::path::Path::new(dir).exists() {
            println!("cargo:rerun-if-changed={dir}");
        }
    }
    let exists = |p: &str| std::path::Path::new(p).exists();
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|ids| ids.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    for (cfg, present) in [
        (
            "have_smtp_sink",
            exists("/usr/sbin/smtp-sink") || exists("/usr/bin/smtp-sink"),
        ),
        (
            "have_fuse",
            exists("/dev/fuse") && exists("/usr/bin/fusermount3"),
        ),
        ("have_faketime", exists("/usr/bin/faketime")),
        ("have_spamassassin", exists("/usr/bin/spamassassin")),
        ("have_aiosmtpd", python_has("aiosmtpd")),
        (
            "have_dkimpy",
            python_has("aiosmtpd") && python_has("dkim") && python_has("nacl"),
        ),
        ("have_standardwebhooks", python_has("standardwebhooks")),
        (
            "have_chromium",
            exists("/usr/bin/chromium") && exists("/usr/bin/chromedriver"),
        ),
        ("have_root", root),
        (
            "have_smarthost",
            root && exists("/usr/sbin/postfix") && exists("/usr/sbin/dovecot"),
        ),
    ] {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        if present || ci {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}

/// Whether `python3` can import `module` (a test peer from PyPI).
fn python_has(module: &str) -> bool {
    std::process::Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
