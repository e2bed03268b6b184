//! `mailspool enqueue`: one message from the command line, its bodies and
//! attachments read from files.

use super::*;

#[derive(Debug, Args)]
pub struct EnqueueArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(long)]
    pub from: String,
    #[arg(long, required = true)]
    pub to: Vec<String>,
    #[arg(long)]
    pub cc: Vec<String>,
    #[arg(long)]
    pub bcc: Vec<String>,
    #[arg(long, default_value = "")]
    pub reply_to: String,
    /// The SMTP MAIL FROM, where bounces go (default: the From address)
    #[arg(long, default_value = "")]
    pub envelope_from: String,
    #[arg(long, default_value = "")]
    pub subject: String,
    #[arg(long, default_value = "", conflicts_with = "text_file")]
    pub text: String,
    /// The text body from a file (`-`: standard input)
    #[arg(long)]
    pub text_file: Option<PathBuf>,
    #[arg(long, default_value = "", conflicts_with = "html_file")]
    pub html: String,
    /// The HTML body from a file (`-`: standard input)
    #[arg(long)]
    pub html_file: Option<PathBuf>,
    /// An extra header field, `Name: value` (repeatable; a name may repeat)
    #[arg(long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// A file to attach (repeatable); its type is guessed from the
    /// extension, or given as `FILE;type=application/pdf`
    #[arg(long = "attach", value_name = "FILE[;type=TYPE]")]
    pub attach: Vec<String>,
    #[arg(long, value_parser = ["transactional", "normal", "bulk"], default_value = "normal")]
    pub lane: String,
    #[arg(long, default_value = "")]
    pub idempotency_key: String,
    /// Never send it after this long (`10m`, `2h`): its recipients expire
    #[arg(long, value_parser = crate::cli::admin::flags::parse_duration)]
    pub expires_in: Option<u64>,
}

pub async fn enqueue(a: EnqueueArgs) -> ClientResult {
    let text_body = body(a.text, a.text_file.as_deref(), "--text-file")?;
    let html_body = body(a.html, a.html_file.as_deref(), "--html-file")?;
    let extra_headers = a
        .headers
        .iter()
        .map(|h| header(h))
        .collect::<Result<Vec<_>, _>>()?;
    let attachments = a
        .attach
        .iter()
        .map(|spec| attachment(spec))
        .collect::<Result<Vec<_>, _>>()?;
    let lane = match a.lane.as_str() {
        "transactional" => pb::Lane::Transactional,
        "bulk" => pb::Lane::Bulk,
        _ => pb::Lane::Normal,
    };
    let mut client = pb::mail_queue_client::MailQueueClient::new(channel(&a.client).await?);
    let resp = client
        .enqueue(pb::EnqueueRequest {
            email: Some(pb::Email {
                from: a.from,
                to: a.to,
                cc: a.cc,
                bcc: a.bcc,
                reply_to: a.reply_to,
                envelope_from: a.envelope_from,
                subject: a.subject,
                text_body,
                html_body,
                extra_headers,
                attachments,
                ..Default::default()
            }),
            lane: lane as i32,
            idempotency_key: a.idempotency_key,
            not_before_unix_ms: 0,
            raw: None,
            expires_at_unix_ms: a
                .expires_in
                .map_or(0, |s| crate::model::wall_ms() as i64 + s as i64 * 1000),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if resp.duplicate {
        println!("{} (duplicate: idempotency key seen before)", resp.id);
    } else {
        println!("{}", resp.id);
    }
    for s in &resp.suppressed {
        eprintln!(
            "not sent to {}: suppressed ({} since {}); `mailspool suppression remove {}` to send to it again",
            s.address,
            s.reason,
            crate::model::utc_time(s.since_unix_ms),
            s.address
        );
    }
    Ok(())
}

/// The body given inline, or read from `file` (`-`: standard input).
fn body(inline: String, file: Option<&std::path::Path>, flag: &str) -> Result<String, String> {
    let Some(path) = file else {
        return Ok(inline);
    };
    let bytes = if path.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
            .map_err(|e| format!("{flag} -: reading standard input: {e}"))?;
        buf
    } else {
        std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))?
    };
    String::from_utf8(bytes).map_err(|_| {
        format!(
            "{flag} {}: not UTF-8 text; send other files with --attach",
            path.display()
        )
    })
}

fn header(spec: &str) -> Result<pb::Header, String> {
    match spec.split_once(':') {
        Some((name, value)) if !name.trim().is_empty() => Ok(pb::Header {
            name: name.trim().to_string(),
            value: value.trim_start().to_string(),
        }),
        _ => Err(format!(
            "--header `{spec}`: give `Name: value`, e.g. --header 'X-Campaign: spring'"
        )),
    }
}

/// `FILE` or `FILE;type=TYPE`: the file's bytes, named by its last path
/// component.
fn attachment(spec: &str) -> Result<pb::Attachment, String> {
    let (path, content_type) = match spec.split_once(";type=") {
        Some((p, t)) => (p, t.to_string()),
        None => (spec, String::new()),
    };
    let path = std::path::Path::new(path);
    let content = std::fs::read(path).map_err(|e| format!("--attach {}: {e}", path.display()))?;
    let filename = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| format!("--attach {}: not a file name", path.display()))?;
    let content_type = if content_type.is_empty() {
        crate::intake::message::guess_content_type(&filename).to_string()
    } else {
        content_type
    };
    Ok(pb::Attachment {
        filename,
        content_type,
        content,
        ..Default::default()
    })
}
