//! top-domains, transfer progress and the clients table.

use super::*;

/// Column labels of `top-domains`: each bucket's upper bound in minutes, the
/// last open one (0) as the previous bound followed by `+`.
pub fn bucket_labels(upper: &[u32]) -> Vec<String> {
    let mut prev = 0;
    upper
        .iter()
        .map(|&u| {
            if u == 0 {
                format!("{prev}+")
            } else {
                prev = u;
                u.to_string()
            }
        })
        .collect()
}

/// `top-domains`: DOMAIN, TOTAL, then one column per age bucket; the TOTAL
/// row first.
pub fn top_domains_table(r: &pb::TopDomainsResponse) -> String {
    let labels = bucket_labels(&r.bucket_upper_minutes);
    let mut headers: Vec<&str> = vec!["DOMAIN", "TOTAL"];
    headers.extend(labels.iter().map(String::as_str));
    let mut align = vec![Align::Left];
    align.resize(headers.len(), Align::Right);
    let row = |name: &str, d: &pb::DomainRow| {
        let mut cells = vec![name.to_string(), thousands(d.total)];
        for i in 0..labels.len() {
            cells.push(thousands(d.buckets.get(i).copied().unwrap_or(0)));
        }
        cells
    };
    let empty = pb::DomainRow::default();
    let mut rows = vec![row("TOTAL", r.total.as_ref().unwrap_or(&empty))];
    rows.extend(r.domains.iter().map(|d| row(&d.domain, d)));
    table(&headers, &align, &rows)
}

fn domain_row_json(d: &pb::DomainRow) -> Value {
    json!({ "domain": d.domain, "total": d.total, "buckets": d.buckets })
}

/// `top-domains --json`: the response, shaped like the proto.
pub fn top_domains_json(r: &pb::TopDomainsResponse) -> Value {
    json!({
        "bucket_upper_minutes": r.bucket_upper_minutes,
        "domains": r.domains.iter().map(domain_row_json).collect::<Vec<_>>(),
        "total": r.total.as_ref().map(domain_row_json),
        "scanned": r.scanned,
    })
}

/// The final line of `queue transfer`.
pub fn transfer_text(p: &pb::TransferProgress, to: &str) -> String {
    format!(
        "transferred {} to {to} ({} already there); {} left here (in flight or refused)",
        thousands(p.transferred),
        thousands(p.duplicates),
        thousands(p.remaining)
    )
}

/// One client's figures of QueueStats, for `--json`.
pub fn client_json(c: &pb::ClientStats) -> serde_json::Value {
    serde_json::json!({
        "name": c.name, "queued": c.queued, "queued_bytes": c.queued_bytes,
        "enqueued_total": c.enqueued_total, "delivered_total": c.delivered_total,
        "dead_total": c.dead_total, "refused_rate_total": c.refused_rate_total,
        "refused_quota_total": c.refused_quota_total,
        "refused_policy_total": c.refused_policy_total,
        "rate_per_second": c.rate_per_second,
        "max_queued_messages": c.max_queued_messages,
        "max_queued_bytes": c.max_queued_bytes,
    })
}

/// Per-client figures of QueueStats as a table: queued against the quota,
/// totals, and refusals by reason.
pub fn clients_table(clients: &[pb::ClientStats]) -> String {
    let limit = |v: u64| {
        if v == 0 {
            "-".to_string()
        } else {
            thousands(v)
        }
    };
    let row = |cells: [&str; 8]| {
        let [name, rest @ ..] = cells;
        let mut line = format!("{name:<20}");
        for c in rest {
            line.push_str(&format!(" {c:>14}"));
        }
        line + "\n"
    };
    let mut out = row([
        "client",
        "queued",
        "quota",
        "enqueued",
        "delivered",
        "refused/rate",
        "refused/quota",
        "refused/policy",
    ]);
    for c in clients {
        out.push_str(&row([
            &c.name,
            &thousands(c.queued),
            &limit(c.max_queued_messages),
            &thousands(c.enqueued_total),
            &thousands(c.delivered_total),
            &thousands(c.refused_rate_total),
            &thousands(c.refused_quota_total),
            &thousands(c.refused_policy_total),
        ]));
    }
    out
}
