//! What a drill sends its mail into: mailspool over gRPC, or (for the
//! same scenario side by side) a Postfix instance of its own over SMTP.
//! Each sends one transactional message, takes the surge in, and tells
//! its queue's state for the samples.

use std::time::Instant;

use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::report::Sample;
use super::Error;
use crate::harness::bench::postfix::Postfix;
use crate::harness::bench::stats;
use crate::pb;
use crate::pb::mail_queue_client::MailQueueClient;

pub(crate) type Client = MailQueueClient<crate::intake::auth::AuthChannel>;

pub(crate) fn message(subject: String, lane: pb::Lane, body: &str) -> pb::EnqueueRequest {
    pb::EnqueueRequest {
        email: Some(pb::Email {
            from: "drill@example.com".into(),
            to: vec!["user@example.org".into()],
            subject,
            text_body: body.to_string(),
            ..Default::default()
        }),
        lane: lane as i32,
        ..Default::default()
    }
}

#[derive(Clone)]
pub(crate) enum Front {
    Mailspool {
        url: String,
        client: Client,
    },
    Postfix {
        smtp: AsyncSmtpTransport<Tokio1Executor>,
        port: u16,
    },
}

impl Front {
    /// Sends transactional message `n`: how long the call took, and the
    /// id it was given (Postfix: none); None when refused.
    pub async fn send(&self, n: usize, body: &str) -> Option<(f64, String)> {
        let t = Instant::now();
        let subject = format!("drill tx {n}");
        let id = match self {
            Front::Mailspool { client, .. } => {
                let r = message(subject, pb::Lane::Transactional, body);
                client.clone().enqueue(r).await.ok()?.into_inner().id
            }
            Front::Postfix { smtp, .. } => {
                let m = lettre::Message::builder()
                    .from("drill@example.com".parse().ok()?)
                    .to("user@example.org".parse().ok()?)
                    .subject(subject)
                    .body(body.to_string())
                    .ok()?;
                smtp.send(m).await.ok()?;
                String::new()
            }
        };
        Some((t.elapsed().as_secs_f64() * 1000.0, id))
    }

    /// Takes `n` bulk messages in: (ids acknowledged, or one empty string
    /// each through Postfix; items refused; seconds).
    pub async fn surge(&self, n: usize, body: String) -> Result<(Vec<String>, usize, f64), Error> {
        match self {
            Front::Mailspool { client, .. } => Ok(surge(client.clone(), n, body).await),
            Front::Postfix { port, .. } => {
                let secs = crate::harness::bench::postfix::smtp_source(
                    *port,
                    n,
                    body.len(),
                    "drill bulk",
                    "drill@example.com",
                )
                .await?;
                Ok((vec![String::new(); n], 0, secs))
            }
        }
    }

    /// The queue's state now (Postfix: its queue's length only).
    pub async fn sample(&self, postfix: Option<&Postfix>) -> Result<Sample, Error> {
        Ok(match self {
            Front::Mailspool { url, .. } => {
                let st = stats(url).await?;
                Sample {
                    level: st.congestion,
                    reason: st.congestion_reason,
                    cause: st.congestion_cause,
                    queued: st.queued,
                    eta_secs: st.drain_eta_seconds,
                    enqueue_rate: st.enqueue_rate_per_second,
                    delivery_rate: st.delivery_rate_per_second,
                    ..Default::default()
                }
            }
            Front::Postfix { .. } => Sample {
                queued: postfix.and_then(Postfix::queued).unwrap_or(0),
                ..Default::default()
            },
        })
    }
}

/// The surge through mailspool: `n` bulk messages, EnqueueBatch of 100, 4
/// calls in flight. Returns (ids acknowledged, items refused, seconds).
pub(crate) async fn surge(client: Client, n: usize, body: String) -> (Vec<String>, usize, f64) {
    let started = Instant::now();
    let calls = n.div_ceil(100);
    let mut tasks = Vec::new();
    for w in 0..4.min(calls) {
        let (mut client, body) = (client.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ids, mut refused) = (Vec::new(), 0);
            let mut call = w;
            while call < calls {
                let requests: Vec<_> = (call * 100..((call + 1) * 100).min(n))
                    .map(|i| message(format!("drill bulk {i}"), pb::Lane::Bulk, &body))
                    .collect();
                let len = requests.len();
                match client
                    .enqueue_batch(pb::EnqueueBatchRequest { requests })
                    .await
                {
                    Ok(r) => {
                        for item in r.into_inner().results {
                            if item.code == 0 {
                                ids.push(item.id);
                            } else {
                                refused += 1;
                            }
                        }
                    }
                    Err(_) => refused += len,
                }
                call += 4;
            }
            (ids, refused)
        }));
    }
    let (mut ids, mut refused) = (Vec::with_capacity(n), 0);
    for t in tasks {
        if let Ok((i, r)) = t.await {
            ids.extend(i);
            refused += r;
        }
    }
    (ids, refused, started.elapsed().as_secs_f64())
}
