//! An opt-in per-op time profile (`DDPM_PROFILE=1`): forward and backward seconds per op kind, accumulated over
//! every tape of the process, printed by [`report`]. Costs one atomic load per op when off.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// 0 = not yet read from the environment, 1 = off, 2 = on.
static STATE: AtomicU8 = AtomicU8::new(0);
/// op name → (forward seconds, backward seconds, forward calls).
static TABLE: Mutex<BTreeMap<&'static str, (f64, f64, u64)>> = Mutex::new(BTreeMap::new());

/// Whether profiling is on (`DDPM_PROFILE` set and not "0").
pub fn enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        0 => {
            let on = std::env::var("DDPM_PROFILE").is_ok_and(|v| v != "0");
            STATE.store(if on { 2 } else { 1 }, Ordering::Relaxed);
            on
        }
        s => s == 2,
    }
}

/// Starts timing when profiling is on.
pub fn start() -> Option<Instant> {
    enabled().then(Instant::now)
}

/// Adds the time since `start` to `op`'s forward (`backward = false`) or backward total.
pub fn record(op: &'static str, backward: bool, start: Option<Instant>) {
    if let Some(s) = start {
        let dt = s.elapsed().as_secs_f64();
        let mut t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
        let e = t.entry(op).or_insert((0.0, 0.0, 0));
        if backward {
            e.1 += dt;
        } else {
            e.0 += dt;
            e.2 += 1;
        }
    }
}

/// The accumulated table as text (empty when profiling is off), slowest op first.
pub fn report() -> String {
    let t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let mut rows: Vec<_> = t.iter().collect();
    rows.sort_by(|a, b| (b.1 .0 + b.1 .1).total_cmp(&(a.1 .0 + a.1 .1)));
    let total: f64 = rows.iter().map(|(_, v)| v.0 + v.1).sum();
    let mut s = format!("{:<18} {:>10} {:>10} {:>7} {:>8}\n", "op", "fwd s", "bwd s", "share", "calls");
    for (op, (f, b, n)) in rows {
        s += &format!("{op:<18} {f:>10.3} {b:>10.3} {:>6.1}% {n:>8}\n", 100.0 * (f + b) / total.max(1e-12));
    }
    s
}
