//! Recipients in the API: each one's state for `GetMessage`, the
//! suppressed ones `Enqueue` reports, and a message's deadline.

use crate::intake::message::InvalidField;
use crate::model::{finish_of, BounceClass, Finish, Lane, Rcpt, RcptState};
use crate::pb;

pub(crate) fn bounce_to_proto(c: BounceClass) -> pb::BounceClass {
    use BounceClass as B;
    match c {
        B::BadMailbox => pb::BounceClass::BounceBadMailbox,
        B::BadDomain => pb::BounceClass::BounceBadDomain,
        B::MailboxFull => pb::BounceClass::BounceMailboxFull,
        B::MessageTooLarge => pb::BounceClass::BounceMessageTooLarge,
        B::Policy => pb::BounceClass::BouncePolicy,
        B::RelayAuth => pb::BounceClass::BounceRelayAuth,
        B::Throttled => pb::BounceClass::BounceThrottled,
        B::Temporary => pb::BounceClass::BounceTemporary,
        B::Other => pb::BounceClass::BounceOther,
    }
}

fn state_to_proto(s: RcptState) -> pb::RecipientState {
    match s {
        RcptState::Pending => pb::RecipientState::RecipientPending,
        RcptState::Delivered => pb::RecipientState::RecipientDelivered,
        RcptState::Bounced => pb::RecipientState::RecipientBounced,
        RcptState::Suppressed => pb::RecipientState::RecipientSuppressed,
        RcptState::Expired => pb::RecipientState::RecipientExpired,
        RcptState::Cancelled => pb::RecipientState::RecipientCancelled,
    }
}

/// Each recipient and its state (`rcpts` in `to` order; a record from
/// before recipients had states has none: every one is `default`).
pub fn to_proto(to: &[String], rcpts: &[Rcpt], default: &Rcpt) -> Vec<pb::RecipientStatus> {
    to.iter()
        .enumerate()
        .map(|(i, address)| {
            let r = rcpts.get(i).unwrap_or(default);
            let mut s = pb::RecipientStatus {
                address: address.clone(),
                attempts: r.attempts,
                last_reply: r.last_reply.clone(),
                finished_unix_ms: r.finished_ms as i64,
                ..Default::default()
            };
            s.set_state(state_to_proto(r.state));
            s.set_bounce_class(
                r.class
                    .map_or(pb::BounceClass::Unspecified, bounce_to_proto),
            );
            s
        })
        .collect()
}

/// The state of a finished (delivered-tree) message by its recipients.
pub fn finished_state(rcpts: &[Rcpt]) -> pb::MessageState {
    match finish_of(rcpts) {
        Some(Finish::Partial) => pb::MessageState::PartiallyDelivered,
        Some(Finish::Expired) => pb::MessageState::Expired,
        _ => pb::MessageState::Delivered,
    }
}

/// The suppressed recipients an Enqueue reports.
pub fn suppressed_to_proto(s: &[(String, String, u64)]) -> Vec<pb::SuppressedRecipient> {
    s.iter()
        .map(|(address, reason, since)| pb::SuppressedRecipient {
            address: address.clone(),
            reason: reason.clone(),
            since_unix_ms: *since as i64,
        })
        .collect()
}

/// A message's deadline (0 = none): the earlier of the request's own
/// and its lane's default counted from now.
pub fn deadline(
    expires_at_unix_ms: i64,
    not_before_unix_ms: i64,
    lane: Lane,
    lane_expiry_ms: &[u64; 3],
    now_ms: u64,
) -> Result<u64, InvalidField> {
    let bad = |reason: String| InvalidField {
        field: "expires_at_unix_ms".into(),
        reason,
    };
    if expires_at_unix_ms < 0 {
        return Err(bad("must not be negative (0 = no deadline)".into()));
    }
    let own = expires_at_unix_ms as u64;
    if own != 0 && own <= now_ms {
        return Err(bad(format!(
            "{own} is in the past (now is {now_ms}): the message would never be sent; give a \
             later deadline, or 0 for none"
        )));
    }
    if own != 0 && not_before_unix_ms > 0 && own <= not_before_unix_ms as u64 {
        return Err(bad(format!(
            "{own} is not after not_before_unix_ms ({not_before_unix_ms}): the message would \
             expire before it is due"
        )));
    }
    let lane_default = match lane_expiry_ms[lane.index()] {
        0 => 0,
        ms => now_ms.max(not_before_unix_ms.max(0) as u64) + ms,
    };
    Ok(match (own, lane_default) {
        (0, d) | (d, 0) => d,
        (a, b) => a.min(b),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_the_earlier_wins() {
        let lanes = [1_800_000, 0, 0];
        let now = 1_000_000;
        assert_eq!(deadline(0, 0, Lane::Normal, &lanes, now), Ok(0));
        assert_eq!(
            deadline(0, 0, Lane::Transactional, &lanes, now),
            Ok(2_800_000)
        );
        assert_eq!(
            deadline(2_000_000, 0, Lane::Transactional, &lanes, now),
            Ok(2_000_000)
        );
        assert_eq!(
            deadline(9_000_000, 0, Lane::Transactional, &lanes, now),
            Ok(2_800_000)
        );
        assert_eq!(
            deadline(9_000_000, 0, Lane::Bulk, &lanes, now),
            Ok(9_000_000)
        );
        // The lane's default counts from when it is due.
        assert_eq!(
            deadline(0, 5_000_000, Lane::Transactional, &lanes, now),
            Ok(6_800_000)
        );
        for (at, nb) in [(-1, 0), (999_999, 0), (3_000_000, 3_000_000)] {
            let e = deadline(at, nb, Lane::Normal, &lanes, now).unwrap_err();
            assert_eq!(e.field, "expires_at_unix_ms", "{at} {nb}");
        }
    }

    #[test]
    fn finished_messages_are_named_by_their_recipients() {
        let done = |s: RcptState| Rcpt {
            state: s,
            ..Rcpt::pending(1)
        };
        use RcptState::*;
        assert_eq!(
            finished_state(&[done(Delivered)]),
            pb::MessageState::Delivered
        );
        assert_eq!(finished_state(&[]), pb::MessageState::Delivered);
        assert_eq!(
            finished_state(&[done(Delivered), done(Bounced)]),
            pb::MessageState::PartiallyDelivered
        );
        assert_eq!(
            finished_state(&[done(Expired), done(Suppressed)]),
            pb::MessageState::Expired
        );
        let out = to_proto(&["a@x.org".into()], &[], &Rcpt::pending(2));
        assert_eq!(out[0].state(), pb::RecipientState::RecipientPending);
        assert_eq!(out[0].attempts, 2);
    }
}
