//! Numbers, sizes, durations and times for people.

pub use crate::model::thousands;

/// Bytes in binary units: `512 B`, `1.5 KiB`, `12.0 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

const UNITS: [(&str, u64); 4] = [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)];

/// At most the two largest units, a zero second unit dropped: `3m 20s`,
/// `1h`, `2d 3h`.
pub fn human_duration(secs: u64) -> String {
    let Some(i) = UNITS.iter().position(|(_, n)| secs >= *n) else {
        return "0s".into();
    };
    let (u1, n1) = UNITS[i];
    let mut s = format!("{}{u1}", secs / n1);
    if let Some(&(u2, n2)) = UNITS.get(i + 1) {
        let q = secs % n1 / n2;
        if q > 0 {
            s.push_str(&format!(" {q}{u2}"));
        }
    }
    s
}

/// The largest unit only, rounded down: `45s`, `4m`, `2h`, `3d`.
pub fn short_duration(secs: u64) -> String {
    for (unit, n) in UNITS {
        if secs >= n {
            return format!("{}{unit}", secs / n);
        }
    }
    "0s".into()
}

/// When something will happen: `now` if due, else `in 4m`.
pub fn until(target_ms: i64, now_ms: i64) -> String {
    let ms = target_ms.saturating_sub(now_ms);
    if ms < 1000 {
        "now".into()
    } else {
        format!("in {}", short_duration((ms / 1000) as u64))
    }
}

/// How long ago something happened: `3m 20s ago`, `just now`.
pub fn ago(then_ms: i64, now_ms: i64) -> String {
    let ms = now_ms.saturating_sub(then_ms);
    if ms < 1000 {
        "just now".into()
    } else {
        format!("{} ago", human_duration((ms / 1000) as u64))
    }
}

/// Whole seconds since `then_ms` (0 if in the future).
pub fn age_secs(then_ms: i64, now_ms: i64) -> u64 {
    (now_ms.saturating_sub(then_ms).max(0) / 1000) as u64
}

pub use crate::model::utc_time;

/// Milliseconds since the Unix epoch, now (the wall clock: the CLI shows
/// the server's times against it).
pub fn now_ms() -> i64 {
    crate::model::wall_ms() as i64
}

/// Cuts `s` to at most `width` characters, ending with `…` when cut; line
/// breaks become spaces.
pub fn truncate(s: &str, width: usize) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= width {
        return flat;
    }
    if width == 0 {
        return String::new();
    }
    let mut out: String = flat.chars().take(width - 1).collect();
    out.push('…');
    out
}
