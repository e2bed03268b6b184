//! The commands that change messages or lanes, by ids or by filter (a dry run first).

use super::*;

/// What an operation is about: ids, or a filter (or an age for purge).
pub(super) struct Target {
    pub(super) ids: Vec<String>,
    pub(super) filter: pb::MessageFilter,
    pub(super) older_than: u64,
    /// An empty filter is allowed.
    pub(super) all_messages: bool,
}

pub(super) async fn queue_op(op: Op, a: OpArgs) -> ClientResult {
    let target = Target {
        ids: a.ids,
        filter: a.filter.to_pb(a.state),
        older_than: 0,
        all_messages: a.all_messages,
    };
    operate(&a.client, op, target, &a.flags).await
}

pub(super) async fn operate(c: &ClientArgs, op: Op, t: Target, f: &OpFlags) -> ClientResult {
    check_target(op, &t)?;
    let mut client = admin(c).await?;
    operate_on(&mut client, op, &t, f, &mut std::io::stdout().lock()).await
}

pub(super) async fn call_op(
    client: &mut AdminClient,
    op: Op,
    t: &Target,
    limit: u64,
    dry_run: bool,
) -> Result<pb::OperationResponse, Box<dyn std::error::Error>> {
    let ids = t.ids.clone();
    let filter = t.ids.is_empty().then(|| t.filter.clone());
    let r = match op {
        Op::Retry => {
            client
                .retry_now(pb::RetryNowRequest {
                    ids,
                    filter,
                    dry_run,
                    limit,
                })
                .await
        }
        Op::Cancel => {
            client
                .cancel(pb::CancelRequest {
                    ids,
                    filter,
                    dry_run,
                    limit,
                })
                .await
        }
        Op::Requeue => {
            client
                .requeue_dead(pb::RequeueDeadRequest {
                    ids,
                    filter,
                    dry_run,
                    limit,
                })
                .await
        }
        Op::Purge => {
            client
                .purge_dead(pb::PurgeDeadRequest {
                    older_than_seconds: t.older_than,
                    dry_run,
                    limit,
                })
                .await
        }
    };
    Ok(r.map_err(status_error)?.into_inner())
}

/// Refuses ids with a filter, and an empty filter without --all-messages.
pub(super) fn check_target(op: Op, t: &Target) -> ClientResult {
    let empty_filter = ac::filter_is_empty(&t.filter);
    if !t.ids.is_empty() && !empty_filter {
        return Err(format!(
            "give message ids or filter flags, not both ({})",
            ac::describe_filter(&t.filter)
        )
        .into());
    }
    if t.ids.is_empty() && empty_filter && !t.all_messages {
        return Err(format!(
            "no ids and no filter: this would {} every message; give ids, narrow it with \
             --state/--lane/--domain/--min-age/--max-age, or pass --all-messages",
            op.verb()
        )
        .into());
    }
    Ok(())
}

/// Ids: at once. A filter (and purge): a dry run, then the change only
/// with --yes.
pub(super) async fn operate_on(
    client: &mut AdminClient,
    op: Op,
    t: &Target,
    f: &OpFlags,
    out: &mut dyn Write,
) -> ClientResult {
    if !t.ids.is_empty() {
        let r = call_op(client, op, t, f.limit, false).await?;
        if let Some(w) = ac::not_found_text(&r) {
            eprintln!("{w}");
        }
        if f.json {
            writeln!(out, "{}", ac::op_json(op, false, &r))?;
        } else {
            writeln!(out, "{}", ac::result_text(op, &r))?;
        }
        return Ok(());
    }
    let what = if op == Op::Purge {
        if t.older_than == 0 {
            "(every one)".to_string()
        } else {
            format!("older than {}", ac::duration_flag(t.older_than))
        }
    } else if ac::filter_is_empty(&t.filter) {
        "(no filter: every one)".to_string()
    } else {
        format!("matching {}", ac::describe_filter(&t.filter))
    };
    let preview = call_op(client, op, t, f.limit, true).await?;
    let n = ac::would_touch(&preview, f.limit);
    if f.json {
        if n == 0 || !f.yes {
            writeln!(out, "{}", ac::op_json(op, true, &preview))?;
        }
    } else {
        writeln!(out, "{}", ac::dry_run_text(op, &preview, &what, f.limit))?;
    }
    if n == 0 {
        return Ok(());
    }
    if !f.yes {
        return Err(ac::confirm_text(op, &preview, f.limit).into());
    }
    let r = call_op(client, op, t, f.limit, false).await?;
    if f.json {
        writeln!(out, "{}", ac::op_json(op, false, &r))?;
    } else {
        writeln!(out, "{}", ac::result_text(op, &r))?;
    }
    Ok(())
}

pub(super) async fn pause_resume(pause: bool, a: LanesArgs) -> ClientResult {
    let mut client = admin(&a.client).await?;
    let lanes: Vec<i32> = a.lanes.iter().map(|l| l.to_pb() as i32).collect();
    let r = if pause {
        client
            .pause_delivery(pb::PauseDeliveryRequest { lanes })
            .await
    } else {
        client
            .resume_delivery(pb::ResumeDeliveryRequest { lanes })
            .await
    }
    .map_err(status_error)?
    .into_inner();
    if a.json {
        let names: Vec<&str> = r.paused_lanes.iter().map(|&l| ac::lane_name(l)).collect();
        println!("{}", serde_json::json!({ "paused_lanes": names }));
    } else {
        println!("delivery paused: {}", ac::lanes_list(&r.paused_lanes));
    }
    Ok(())
}
