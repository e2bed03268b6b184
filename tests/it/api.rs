//! Enqueue, validation, idempotency, GetMessage and QueueStats.

use std::time::Duration;

use mailspool::pb;
use tonic::Code;

use crate::support::smtp::{Mode, SmtpPeer};
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_is_delivered_and_counted() {
    let peer = SmtpPeer::start(Mode::Accept).await;
    let dir = tempdir();
    let s = TestServer::start(config(dir.path(), Some(peer.url()))).await;
    let mut req = request("welcome");
    req.email.as_mut().unwrap().html_body = "<b>hi</b>".into();
    req.email.as_mut().unwrap().bcc = vec!["audit@example.net".into()];
    let r = s.enqueue(req).await.unwrap();
    assert!(!r.duplicate);
    assert_eq!(r.id.len(), 16);
    let m = s.wait_state(&r.id, pb::MessageState::Delivered).await;
    assert_eq!(m.attempts, 1);
    assert_eq!(m.message_id, r.message_id);
    let got = peer.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message_id, r.message_id);
    assert_eq!(got[0].subject, "welcome");
    assert!(got[0].raw.contains("multipart/alternative"));
    assert!(
        !got[0].raw.contains("audit@example.net"),
        "Bcc must not appear in headers"
    );
    let st = s.stats().await;
    assert_eq!(
        (st.enqueued_total, st.delivered_total, st.queued),
        (1, 1, 0)
    );
    assert_eq!(st.drain_eta_seconds, 0.0);
    // The worker counts the delivery into the rate just after the store
    // has committed it (which GetMessage already shows).
    assert!(
        wait_until(Duration::from_secs(10), || async {
            s.stats().await.delivery_rate_per_second > 0.0
        })
        .await
    );
    s.shutdown().await;
}

/// A request with one thing wrong, and the field its error must name.
fn bad_requests() -> Vec<(&'static str, pb::EnqueueRequest, &'static str)> {
    let edit = |f: &dyn Fn(&mut pb::Email)| {
        let mut r = request("bad");
        f(r.email.as_mut().unwrap());
        r
    };
    let header = |k: &str, v: &str| {
        let (k, v) = (k.to_string(), v.to_string());
        edit(&move |e: &mut pb::Email| {
            e.headers.insert(k.clone(), v.clone());
        })
    };
    vec![
        (
            "missing email",
            pb::EnqueueRequest {
                email: None,
                ..request("x")
            },
            "email",
        ),
        (
            "bad from",
            edit(&|e| e.from = "nobody".into()),
            "email.from",
        ),
        ("empty from", edit(&|e| e.from.clear()), "email.from"),
        ("no recipients", edit(&|e| e.to.clear()), "email.to"),
        (
            "bad to",
            edit(&|e| e.to.push("not-an-address".into())),
            "email.to[1]",
        ),
        ("bad cc", edit(&|e| e.cc = vec!["a@".into()]), "email.cc[0]"),
        (
            "bad bcc",
            edit(&|e| e.bcc = vec!["@b".into()]),
            "email.bcc[0]",
        ),
        (
            "too many",
            edit(&|e| e.to = vec!["x@example.com".into(); 101]),
            "email.to",
        ),
        (
            "bad reply-to",
            edit(&|e| e.reply_to = "nope".into()),
            "email.reply_to",
        ),
        (
            "CR in subject",
            edit(&|e| e.subject = "a\rBcc: x@y.z".into()),
            "email.subject",
        ),
        (
            "LF in from",
            edit(&|e| e.from = "a@b.c\nBcc: x@y.z".into()),
            "email.from",
        ),
        (
            "LF in to",
            edit(&|e| e.to = vec!["a@b.c\n".into()]),
            "email.to[0]",
        ),
        ("no body", edit(&|e| e.text_body.clear()), "email.text_body"),
        (
            "header name space",
            header("X Bad", "v"),
            "email.headers[\"X Bad\"]",
        ),
        (
            "header name colon",
            header("X-Bad:", "v"),
            "email.headers[\"X-Bad:\"]",
        ),
        (
            "header value LF",
            header("X-Ok", "v\nBcc: a@b.c"),
            "email.headers[\"X-Ok\"]",
        ),
        (
            "override From",
            header("From", "a@b.c"),
            "email.headers[\"From\"]",
        ),
        (
            "override Message-ID",
            header("message-id", "<a@b>"),
            "email.headers[\"message-id\"]",
        ),
        (
            "override Date",
            header("Date", "now"),
            "email.headers[\"Date\"]",
        ),
        (
            "too big",
            edit(&|e| e.text_body = "x".repeat(11 * 1024 * 1024)),
            "email",
        ),
        (
            "unknown lane",
            pb::EnqueueRequest {
                lane: 9,
                ..request("x")
            },
            "lane",
        ),
        (
            "long key",
            with_key(request("x"), &"k".repeat(257)),
            "idempotency_key",
        ),
        (
            "far future",
            pb::EnqueueRequest {
                not_before_unix_ms: i64::MAX,
                ..request("x")
            },
            "not_before_unix_ms",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_validation_rule_is_invalid_argument_and_writes_nothing() {
    let dir = tempdir();
    let s = TestServer::start(config(dir.path(), None)).await;
    for (name, req, field) in bad_requests() {
        let err = s.enqueue(req.clone()).await.expect_err(name);
        assert_eq!(err.code(), Code::InvalidArgument, "{name}: {err:?}");
        assert!(
            err.message().starts_with(&format!("{field}:")),
            "{name}: `{}` should name {field}",
            err.message()
        );
        // The same request inside a batch fails alone, with the same field.
        let batch = pb::EnqueueBatchRequest {
            requests: vec![request("fine"), req],
        };
        let results = s
            .queue
            .clone()
            .enqueue_batch(batch)
            .await
            .unwrap()
            .into_inner()
            .results;
        assert_eq!(results[0].code, 0, "{name}");
        assert_eq!(results[1].code, Code::InvalidArgument as i32, "{name}");
        assert!(
            results[1]
                .message
                .starts_with(&format!("requests[1].{field}:")),
            "{name}: {}",
            results[1].message
        );
        assert!(results[1].id.is_empty());
    }
    let n = bad_requests().len() as u64;
    let st = s.stats().await;
    assert_eq!(
        st.enqueued_total, n,
        "only the good half of each batch was stored"
    );
    // Whole-batch errors.
    let empty = s
        .queue
        .clone()
        .enqueue_batch(pb::EnqueueBatchRequest { requests: vec![] })
        .await
        .unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
    assert!(empty.message().starts_with("requests:"));
    let huge = pb::EnqueueBatchRequest {
        requests: vec![request("x"); 1001],
    };
    let err = s.queue.clone().enqueue_batch(huge).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("max_batch_items"),
        "{}",
        err.message()
    );
    // GetMessage: a malformed id and an unknown one.
    assert_eq!(s.get("zz").await.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(
        s.get("0000000000000001").await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(s.stats().await.enqueued_total, n);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_within_a_batch_and_across_a_restart() {
    let peer = SmtpPeer::start(Mode::Defer).await; // keep them queued
    let dir = tempdir();
    let mut cfg = config(dir.path(), Some(peer.url()));
    cfg.retry_base_ms = 60_000;
    cfg.retry_cap_ms = 60_000;
    let s = TestServer::start(cfg).await;
    let batch = pb::EnqueueBatchRequest {
        requests: vec![
            with_key(request("a"), "order-1"),
            with_key(request("a again"), "order-1"),
            with_key(request("b"), "order-2"),
        ],
    };
    let r = s
        .queue
        .clone()
        .enqueue_batch(batch)
        .await
        .unwrap()
        .into_inner()
        .results;
    assert!(
        !r[0].duplicate && r[1].duplicate && !r[2].duplicate,
        "{r:?}"
    );
    assert_eq!(r[0].id, r[1].id);
    assert_ne!(r[0].id, r[2].id);
    let s = s.restart().await;
    let again = s
        .enqueue(with_key(request("a third time"), "order-1"))
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.id, r[0].id);
    let st = s.stats().await;
    assert_eq!(st.enqueued_total, 2);
    assert_eq!(st.duplicates_total, 2);
    assert_eq!(st.queued, 2);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_before_schedules_and_stats_show_it() {
    let dir = tempdir();
    let s = TestServer::start(config(dir.path(), None)).await;
    let later = mailspool::model::now_ms() as i64 + 3_600_000;
    let r = s
        .enqueue(pb::EnqueueRequest {
            not_before_unix_ms: later,
            ..with_lane(request("later"), pb::Lane::Bulk)
        })
        .await
        .unwrap();
    let m = s.get(&r.id).await.unwrap();
    assert_eq!(m.state(), pb::MessageState::Queued);
    assert_eq!(m.next_attempt_unix_ms, later);
    assert_eq!(m.lane(), pb::Lane::Bulk);
    let st = s.stats().await;
    assert_eq!(
        (
            st.queued,
            st.scheduled,
            st.ready,
            st.in_flight,
            st.queued_bulk
        ),
        (1, 1, 0, 0, 1)
    );
    assert!(st.oldest_queued_age_seconds >= 0.0 && st.oldest_queued_age_seconds < 60.0);
    assert_eq!(
        st.drain_eta_seconds, -1.0,
        "queued but nothing delivered: not draining"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_is_the_default_relay() {
    let dir = tempdir();
    let s = TestServer::start(config(dir.path(), None)).await;
    let r = s.enqueue(request("to the outbox")).await.unwrap();
    s.wait_state(&r.id, pb::MessageState::Delivered).await;
    let files = outbox_files(dir.path());
    assert_eq!(files.len(), 1);
    let eml = std::fs::read_to_string(&files[0]).unwrap();
    assert!(
        eml.contains(&format!("Message-ID: <{}>", r.message_id)),
        "{eml}"
    );
    assert!(eml.contains("Subject: to the outbox"));
    s.shutdown().await;
}

/// Sends raw bytes as a gRPC request body.
#[derive(Debug, Default, Clone)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes_like::BufMut;
        buf.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes_like::Buf;
        let mut out = vec![0; buf.remaining()];
        buf.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

mod bytes_like {
    pub use prost::bytes::{Buf, BufMut};
}

async fn raw_call(s: &TestServer, body: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
    let channel = tonic::transport::Channel::from_shared(format!(
        "http://{}",
        s.handle.as_ref().unwrap().addr
    ))
    .unwrap()
    .connect()
    .await
    .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/mailspool.v1.MailQueue/Enqueue");
    grpc.unary(tonic::Request::new(body), path, RawCodec)
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_and_oversized_requests_get_a_clear_status_and_write_nothing() {
    let dir = tempdir();
    let s = TestServer::start(config(dir.path(), None)).await;
    // EnqueueRequest { email: Email { from: <0xff 0xfe> } }: invalid UTF-8 in a string.
    let bad_utf8 = vec![0x0a, 0x04, 0x0a, 0x02, 0xff, 0xfe];
    // A length prefix that runs past the end.
    let truncated = vec![0x0a, 0x10, 0x0a];
    for (name, body) in [("invalid UTF-8", bad_utf8), ("truncated", truncated)] {
        let err = raw_call(&s, body).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{name}: {err:?}");
        assert!(
            err.message().starts_with("request:"),
            "{name}: {}",
            err.message()
        );
    }
    // Over the decode limit (32 MiB by default): tonic's own clear error.
    let mut big = request("big");
    big.email.as_mut().unwrap().text_body = "x".repeat(40 << 20);
    let err = s
        .queue
        .clone()
        .max_encoding_message_size(64 << 20)
        .enqueue(big)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(err.message().contains("too large"), "{}", err.message());
    assert_eq!(s.stats().await.enqueued_total, 0);
    // A 10,000-item batch is refused whole.
    let huge = pb::EnqueueBatchRequest {
        requests: vec![request("x"); 10_000],
    };
    assert_eq!(
        s.queue
            .clone()
            .enqueue_batch(huge)
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(s.stats().await.enqueued_total, 0);
    s.shutdown().await;
}
