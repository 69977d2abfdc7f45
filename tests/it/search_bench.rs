//! Search index benchmark (run by `scripts/bench-search`, ignored otherwise): a history
//! role's index of SEARCH_BENCH_SESSIONS sessions (default 100,000) with SEARCH_BENCH_EVENTS
//! events (default 10,000,000) of synthetic typed commands, titles and screen text, built in
//! batches of 1,000 clips per commit. Prints the build ("rebuild") time, the index size and
//! peak RSS per million events, and p50/p99 of 1,000 searches through `SearchIndex::search`
//! (top 20 with snippets, newest first: words, phrases, with a user, an appliance, a kind or a
//! time range), also by filter. Figures, not pass/fail.

use std::time::Instant;

use session_recorder::events::{ActivitySecond, ClipEvents, Event, EventDetail, EventKind};
use session_recorder::search::{ClipPlace, SearchIndex, SearchQuery};

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const COMMANDS: [&str; 12] = [
    "ls -la",
    "cd /var/log",
    "tail -f syslog",
    "sudo systemctl restart",
    "psql -U erp",
    "DROP TABLE",
    "scp report.csv",
    "vim /etc/hosts",
    "grep -r password",
    "kubectl get pods",
    "git pull origin",
    "docker ps -a",
];

fn word(r: &mut Rng) -> String {
    // Zipf-ish: frequent short words and a long tail of rare ones.
    let k = r.below(50_000);
    let k = (k * k) / 50_000;
    format!("w{k}")
}

fn clip_events(r: &mut Rng, n: usize) -> ClipEvents {
    let mut events = Vec::with_capacity(n);
    for i in 0..n {
        let text = format!(
            "{} {} {} {}",
            COMMANDS[r.below(COMMANDS.len() as u64) as usize],
            word(r),
            word(r),
            word(r)
        );
        let detail = match r.below(10) {
            0 => EventDetail::Title { title: text },
            1..=3 => EventDetail::ScreenText {
                text,
                region: [0, 0, 800, 20],
            },
            _ => EventDetail::Typed {
                raw: text.clone(),
                text,
                masked_keys: 0,
                keys: 20,
            },
        };
        events.push(Event {
            offset_ms: i as u64 * 700,
            detail,
        });
    }
    ClipEvents {
        events,
        activity_start_ms: 0,
        activity: vec![ActivitySecond::default(); 60],
    }
}

fn rss_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn dir_bytes(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// CPU time this thread has run, ms (`CLOCK_THREAD_CPUTIME_ID`): a search's own cost, what
/// wall time shows on a quiet machine (on a loaded one wall time adds the waits for a core).
fn thread_cpu_ms() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec the call writes.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    t.tv_sec as f64 * 1e3 + t.tv_nsec as f64 / 1e6
}

fn env_or(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
#[ignore = "benchmark: scripts/bench-search"]
fn bench_search() {
    let sessions = env_or("SEARCH_BENCH_SESSIONS", 100_000);
    let events_total = env_or("SEARCH_BENCH_EVENTS", 10_000_000);
    let per_session = (events_total / sessions).max(1) as usize;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let index = SearchIndex::open(dir.path()).unwrap();
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let t0 = Instant::now();
    let day0 = 1_790_000_000_000u64;
    let mut batch = Vec::new();
    let mut filed = 0usize;
    for s in 0..sessions {
        let start = day0 + s * 600_000;
        let place = ClipPlace {
            session: format!("s{s:06}@appliance-{}", s % 50),
            appliance: format!("appliance-{}", s % 50),
            user: format!("user{}@example.com", s % 300),
            clip_index: 1,
            clip_start_ms: start,
            session_start_ms: start,
        };
        batch.push((place, clip_events(&mut r, per_session)));
        if batch.len() == 1_000 || s + 1 == sessions {
            let refs: Vec<_> = batch.iter().map(|(p, e)| (p.clone(), e)).collect();
            filed += index.index_clips(&refs).unwrap();
            batch.clear();
        }
    }
    let build_s = t0.elapsed().as_secs_f64();
    let stats = index.stats().unwrap();
    assert_eq!(stats.events as usize, filed);
    let millions = filed as f64 / 1e6;
    let bytes = dir_bytes(dir.path());
    println!(
        "built: {sessions} sessions, {filed} events in {build_s:.1} s ({:.0} events/s); \
         index {:.1} MB = {:.1} MB per million events; peak RSS while building {:.0} MiB",
        filed as f64 / build_s,
        bytes as f64 / 1e6,
        bytes as f64 / 1e6 / millions,
        rss_kib("VmHWM:") as f64 / 1024.0
    );

    let mut times = Vec::new();
    // By filter: none, user, appliance, kind, dates.
    let mut by_filter: [Vec<f64>; 5] = Default::default();
    let mut capped = 0usize;
    let mut cpu = Vec::new();
    let mut hits_total = 0usize;
    for i in 0..1_000u64 {
        let mut q = SearchQuery {
            limit: 20,
            ..SearchQuery::default()
        };
        q.text = match i % 4 {
            0 => word(&mut r),
            1 => format!("{} {}", word(&mut r), word(&mut r)),
            2 => format!("\"{}\"", COMMANDS[(i % 12) as usize]),
            _ => "DROP TABLE".to_string(),
        };
        match i % 5 {
            0 => q.user = Some(format!("user{}", r.below(300))),
            1 => q.appliance = Some(format!("appliance-{}", r.below(50))),
            2 => q.kinds = vec![EventKind::Typed],
            3 => {
                let from = day0 + r.below(sessions) * 600_000;
                q.from_ms = Some(from);
                q.to_ms = Some(from + 7 * 86_400_000);
            }
            _ => {}
        }
        let c = thread_cpu_ms();
        let t = Instant::now();
        let page = index.search(&q, true).unwrap();
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        cpu.push(thread_cpu_ms() - c);
        times.push(ms);
        by_filter[((i % 5 + 1) % 5) as usize].push(ms);
        hits_total += page.hits.len();
        capped += usize::from(!page.total_exact);
    }
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    for (name, v) in ["none", "user", "appliance", "kind", "dates"]
        .iter()
        .zip(by_filter.iter_mut())
    {
        v.sort_by(f64::total_cmp);
        println!(
            "  filter {name:<9}: p50 {:.2} ms, p99 {:.2} ms ({} searches)",
            v[v.len() / 2],
            v[((v.len() as f64 * 0.99) as usize).min(v.len() - 1)],
            v.len()
        );
    }
    println!("  {capped} of 1000 searches had more than 10,000 hits (count capped)");
    cpu.sort_by(f64::total_cmp);
    println!(
        "  CPU time of a search: p50 {:.2} ms, p99 {:.2} ms; load average {}",
        cpu[cpu.len() / 2],
        cpu[((cpu.len() as f64 * 0.99) as usize).min(cpu.len() - 1)],
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "1000 searches (top 20 with snippets): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; \
         {hits_total} hits shown; RSS now {:.0} MiB, peak {:.0} MiB ({:.1} MiB per million events)",
        pct(0.5),
        pct(0.99),
        times[times.len() - 1],
        rss_kib("VmRSS:") as f64 / 1024.0,
        rss_kib("VmHWM:") as f64 / 1024.0,
        rss_kib("VmHWM:") as f64 / 1024.0 / millions
    );
    let t = Instant::now();
    let (events, _) = index.session_events("s000042@appliance-42", true).unwrap();
    println!(
        "one session's event pane ({} events): {:.2} ms",
        events.len(),
        t.elapsed().as_secs_f64() * 1000.0
    );
}
