//! A scripted SMTP peer over real TCP, for the tests and `mailspool
//! torture`: it accepts, defers (451), throttles (421), rejects (550),
//! stalls or drops the connection after DATA, or fails the TLS handshake
//! after offering STARTTLS, as it is told, and records every message it
//! accepted with its recipients. It may take at most N recipients per
//! transaction (`452 4.5.3` past them), as Postfix's smtpd_recipient_limit.
//! Real sockets, real protocol; nothing is mocked in mailspool.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// What the peer answers after the final `.` of a message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Accept,
    /// Accept after waiting this long (a slow relay).
    AcceptAfter(Duration),
    /// 451 4.3.0
    Defer,
    /// 450 4.2.1: this mailbox, not the relay, is busy (a per-message retry).
    DeferMailbox,
    /// 421 4.7.0: the relay asks everyone to slow down.
    Throttle,
    /// 450 4.7.1 "too much mail": Postfix's rate limit (anvil), a 450
    /// that is about us, not the mailbox.
    RateLimited,
    /// 550 5.1.1
    Reject,
    /// Never answer; keep the connection open.
    Stall,
    /// Close the connection without answering.
    Disconnect,
}

#[derive(Debug, Clone)]
pub struct Received {
    pub message_id: String,
    pub subject: String,
    pub raw: String,
    /// The RCPT TO addresses of its transaction.
    pub rcpts: Vec<String>,
    /// When the peer answered 250 for it.
    pub at: std::time::SystemTime,
}

#[derive(Default)]
struct State {
    /// Offer STARTTLS and then fail the handshake.
    broken_tls: bool,
    default: Option<Mode>,
    /// Modes used for the next messages, before the default.
    script: VecDeque<Mode>,
    received: Vec<Received>,
    /// Messages that got an answer other than accept, or none.
    refused: u64,
    /// A relay of limited capacity: accepted messages are spaced this far
    /// apart across all connections; `next` is the next free slot.
    pace: Option<(Duration, tokio::time::Instant)>,
    /// Recipients per transaction (0: any number).
    max_rcpts: usize,
}

#[derive(Clone)]
pub struct SmtpPeer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl SmtpPeer {
    pub async fn start(mode: Mode) -> SmtpPeer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind smtp peer");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            default: Some(mode),
            ..State::default()
        }));
        let s = state.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let _ = serve(conn, s).await;
                });
            }
        });
        SmtpPeer { addr, state }
    }

    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    /// Offer STARTTLS, then answer the handshake with garbage.
    pub fn set_broken_tls(&self, on: bool) {
        self.state.lock().unwrap().broken_tls = on;
    }

    /// Accept at most `per_second` messages a second over all connections
    /// (each waits for its slot after DATA), as a relay of limited capacity.
    pub fn set_capacity(&self, per_second: f64) {
        let gap = Duration::from_secs_f64(1.0 / per_second.max(1e-3));
        self.state.lock().unwrap().pace = Some((gap, tokio::time::Instant::now()));
    }

    /// Take at most `n` recipients per transaction (0: any number).
    pub fn set_max_recipients(&self, n: usize) {
        self.state.lock().unwrap().max_rcpts = n;
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().default = Some(mode);
    }

    /// The next messages get these answers, in order.
    pub fn script(&self, modes: &[Mode]) {
        self.state
            .lock()
            .unwrap()
            .script
            .extend(modes.iter().copied());
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// Subject and time of acceptance of the messages from the `from`-th
    /// on (cheap to poll: no bodies copied).
    pub fn arrivals(&self, from: usize) -> Vec<(String, std::time::SystemTime)> {
        let s = self.state.lock().unwrap();
        s.received
            .get(from..)
            .unwrap_or_default()
            .iter()
            .map(|m| (m.subject.clone(), m.at))
            .collect()
    }

    pub fn received_count(&self) -> usize {
        self.state.lock().unwrap().received.len()
    }

    pub fn refused(&self) -> u64 {
        self.state.lock().unwrap().refused
    }

    fn next_mode(&self) -> Mode {
        let mut s = self.state.lock().unwrap();
        s.script.pop_front().or(s.default).unwrap_or(Mode::Accept)
    }
}

async fn serve(conn: tokio::net::TcpStream, state: Arc<Mutex<State>>) -> std::io::Result<()> {
    let peer = SmtpPeer {
        addr: conn.local_addr()?,
        state,
    };
    let (r, mut w) = conn.into_split();
    let mut r = BufReader::new(r);
    w.write_all(b"220 test-peer ESMTP\r\n").await?;
    let mut line = String::new();
    // The last RCPT TO address, quoted in rejections as real relays do,
    // and the transaction's recipients.
    let mut rcpt = String::new();
    let mut rcpts: Vec<String> = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_ascii_uppercase();
        if cmd.starts_with("MAIL FROM:") || cmd.starts_with("RSET") {
            rcpts.clear();
        }
        if cmd.starts_with("RCPT TO:") {
            rcpt = line.trim_end()[8..].trim().to_string();
            let max = peer.state.lock().unwrap().max_rcpts;
            if max > 0 && rcpts.len() >= max {
                w.write_all(b"452 4.5.3 Error: too many recipients\r\n")
                    .await?;
                continue;
            }
            let address = rcpt.trim_start_matches('<').trim_end_matches('>');
            rcpts.push(address.to_string());
        }
        if cmd.starts_with("EHLO") {
            w.write_all(b"250-test-peer\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")
                .await?;
        } else if cmd.starts_with("DATA") {
            w.write_all(b"354 go ahead\r\n").await?;
            let mut data = String::new();
            loop {
                line.clear();
                if r.read_line(&mut line).await? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" || line == ".\n" {
                    break;
                }
                data.push_str(&line);
            }
            let rcpts = std::mem::take(&mut rcpts);
            match peer.next_mode() {
                Mode::Accept => accept(&peer, data, rcpts, &mut w).await?,
                Mode::AcceptAfter(d) => {
                    tokio::time::sleep(d).await;
                    accept(&peer, data, rcpts, &mut w).await?
                }
                Mode::Defer => {
                    peer.state.lock().unwrap().refused += 1;
                    w.write_all(b"451 4.3.0 try again later\r\n").await?
                }
                Mode::DeferMailbox => {
                    peer.state.lock().unwrap().refused += 1;
                    w.write_all(b"450 4.2.1 mailbox busy, try again later\r\n")
                        .await?
                }
                Mode::RateLimited => {
                    peer.state.lock().unwrap().refused += 1;
                    w.write_all(
                        b"450 4.7.1 <user@example.org>: Recipient address rejected: too much mail from 127.0.0.1\r\n",
                    )
                    .await?;
                }
                Mode::Throttle => {
                    peer.state.lock().unwrap().refused += 1;
                    w.write_all(b"421 4.7.0 too many messages, slow down\r\n")
                        .await?;
                    return Ok(());
                }
                Mode::Reject => {
                    peer.state.lock().unwrap().refused += 1;
                    w.write_all(format!("550 5.1.1 {rcpt}: no such user\r\n").as_bytes())
                        .await?
                }
                Mode::Stall => {
                    peer.state.lock().unwrap().refused += 1;
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    return Ok(());
                }
                Mode::Disconnect => {
                    peer.state.lock().unwrap().refused += 1;
                    return Ok(());
                }
            }
        } else if cmd.starts_with("QUIT") {
            w.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            // HELO, MAIL, RCPT, RSET, NOOP
            w.write_all(b"250 ok\r\n").await?;
        }
    }
}

async fn accept(
    peer: &SmtpPeer,
    data: String,
    rcpts: Vec<String>,
    w: &mut tokio::net::tcp::OwnedWriteHalf,
) -> std::io::Result<()> {
    let header = |name: &str| {
        data.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| {
                v.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            })
            .unwrap_or_default()
    };
    let slot = {
        let mut s = peer.state.lock().unwrap();
        s.pace.as_mut().map(|(gap, next)| {
            let slot = (*next).max(tokio::time::Instant::now());
            *next = slot + *gap;
            slot
        })
    };
    if let Some(slot) = slot {
        tokio::time::sleep_until(slot).await;
    }
    let received = Received {
        message_id: header("Message-ID:"),
        subject: header("Subject:"),
        raw: data.clone(),
        rcpts,
        at: std::time::SystemTime::now(),
    };
    peer.state.lock().unwrap().received.push(received);
    w.write_all(b"250 2.0.0 queued\r\n").await
}
