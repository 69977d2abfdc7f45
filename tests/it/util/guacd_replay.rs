//! Test harness for the tap: a fake guacd that replays real recordings as guacd would, a
//! Guacamole test client, an in-memory [`RecordingSink`], and the tap itself running on its
//! own thread with a `LocalExecutor`.
//!
//! Used by tests/it/tap.rs (included with `#[path]`). Blocking std sockets and plain threads on
//! the test side, so the tap's executor is the only async code under test.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use session_recorder::clock::SystemClock;
use session_recorder::disk::DiskState;
use session_recorder::ingest::handshake::{Instruction, encode, parse_instruction};
pub use session_recorder::ingest::sink::{EndReason, Rejoin};
use session_recorder::ingest::{
    AdmissionState, RecordingSink, SessionMeta, SessionStart, SinkError, TapContext, TapSettings,
    run_tap,
};

/// The shared recordings directory.
pub fn recordings_dir() -> PathBuf {
    if let Ok(p) = std::env::var("SESSION_RECORDER_SHARED") {
        return PathBuf::from(p).join("recordings");
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/recordings");
    if local.is_dir() {
        local
    } else {
        PathBuf::from("/work/shared/recordings")
    }
}

/// A recording's bytes.
pub fn recording(name: &str) -> Arc<Vec<u8>> {
    Arc::new(std::fs::read(recordings_dir().join(name)).expect("read recording"))
}

/// Every recording file name, smallest first.
pub fn all_recordings() -> Vec<String> {
    let mut v: Vec<(u64, String)> = std::fs::read_dir(recordings_dir())
        .expect("recordings dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "guac"))
        .map(|e| {
            (
                e.metadata().map(|m| m.len()).unwrap_or(0),
                e.file_name().to_string_lossy().into_owned(),
            )
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, n)| n).collect()
}

/// Like [`instructions`], but for streams with elements over the handshake limit.
pub fn raw_instructions(data: &[u8]) -> Vec<(Vec<u8>, String)> {
    use session_recorder::ingest::scan::{Event, Scanner};
    let mut s = Scanner::new();
    let mut out = Vec::new();
    let mut start = 0;
    s.feed(data, |ev, pos, cap| {
        if ev == Event::End {
            out.push((
                data[start..pos].to_vec(),
                String::from_utf8_lossy(cap.opcode()).into_owned(),
            ));
            start = pos;
        }
    })
    .expect("valid stream");
    assert_eq!(start, data.len(), "stream ends on a boundary");
    out
}

/// The drawing stream guacd would record from what the fake sent: everything after `args`
/// except per-connection instructions and per-user streams (clipboard, file, pipe, argv,
/// filesystem objects and their `body` downloads, with their `blob`s and `end`).
pub fn expected_drawing(sent_after_args: &[u8]) -> Vec<u8> {
    let mut per_user: std::collections::HashSet<String> = Default::default();
    let mut out = Vec::new();
    for (raw, op) in raw_instructions(sent_after_args) {
        let (ins, _) = parse_instruction(&raw).unwrap().unwrap();
        let arg = |i: usize| ins.args().get(i).cloned().unwrap_or_default();
        let keep = match op.as_str() {
            "ready" | "nop" | "disconnect" | "filesystem" | "undefine" => false,
            "clipboard" | "file" | "pipe" | "argv" => {
                per_user.insert(arg(0));
                false
            }
            "body" => {
                per_user.insert(arg(1));
                false
            }
            "blob" => !per_user.contains(&arg(0)),
            "end" => !per_user.remove(&arg(0)),
            _ => true,
        };
        if keep {
            out.extend_from_slice(&raw);
        }
    }
    out
}

/// The `args` our fake guacd sends (a VNC-like list, version first).
pub fn fake_args() -> Vec<String> {
    [
        "VERSION_1_5_0",
        "hostname",
        "port",
        "password",
        "recording-path",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// What the fake guacd saw on one connection.
#[derive(Debug, Default, Clone)]
pub struct UpstreamConn {
    /// Handshake instructions received, `connect` included.
    pub handshake: Vec<Instruction>,
    /// Every byte sent after `args` (`ready`, the replay, `disconnect`).
    pub sent_after_args: Vec<u8>,
    /// Every byte received after `connect`.
    pub received_after_connect: Vec<u8>,
}

/// How the fake guacd replays.
#[derive(Clone)]
pub struct ReplayOptions {
    /// The recording to replay (its `mouse`/`key` instructions are the client's, not sent).
    pub recording: Arc<Vec<u8>>,
    /// Insert a `nop` (never recorded) every this many instructions; 0 = never.
    pub nop_every: usize,
    /// Sleep this long every 100 instructions (0 = as fast as possible).
    pub pace_ms_per_100: u64,
    /// Wait for the client's `disconnect` before closing.
    pub wait_for_disconnect: bool,
    /// Prepare the whole replay first, then write it in 64 KiB pieces (throughput runs).
    pub bulk: bool,
}

/// A fake guacd on 127.0.0.1 that replays a recording to every connection.
pub struct FakeGuacd {
    /// Its address.
    pub addr: String,
    /// TCP connections accepted.
    pub connections: Arc<AtomicUsize>,
    /// Per finished connection, what it saw.
    pub conns: Arc<Mutex<Vec<UpstreamConn>>>,
    stop: Arc<AtomicBool>,
}

impl FakeGuacd {
    /// Starts it.
    pub fn start(opts: ReplayOptions) -> Self {
        Self::start_on("127.0.0.1:0", opts)
    }

    /// Starts it on `addr` (a guacd coming back where it was).
    pub fn start_on(addr: &str, opts: ReplayOptions) -> Self {
        let listener = TcpListener::bind(addr).expect("bind fake guacd");
        let addr = listener.local_addr().unwrap().to_string();
        let connections = Arc::new(AtomicUsize::new(0));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, cs, st) = (connections.clone(), conns.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                let (opts, cs) = (opts.clone(), cs.clone());
                std::thread::spawn(move || {
                    if let Some(seen) = serve_replay(stream, &opts) {
                        cs.lock().unwrap().push(seen);
                    }
                });
            }
        });
        Self {
            addr,
            connections,
            conns,
            stop,
        }
    }

    /// Waits (bounded) until `n` connections have finished and returns what they saw.
    pub fn wait_conns(&self, n: usize) -> Vec<UpstreamConn> {
        for _ in 0..2000 {
            let c = self.conns.lock().unwrap();
            if c.len() >= n {
                return c.clone();
            }
            drop(c);
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("fake guacd: fewer than {n} finished connections");
    }

    /// Connections accepted so far.
    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for FakeGuacd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
    }
}

/// Reads whole handshake instructions from a blocking stream.
pub struct Reader {
    pub buf: Vec<u8>,
}

impl Reader {
    pub fn new() -> Self {
        Self { buf: Vec::new() }
    }
    /// The next instruction, or `None` at EOF.
    pub fn next(&mut self, s: &mut TcpStream) -> Option<(Instruction, Vec<u8>)> {
        loop {
            if let Some((ins, used)) = parse_instruction(&self.buf).expect("valid handshake") {
                let raw: Vec<u8> = self.buf.drain(..used).collect();
                return Some((ins, raw));
            }
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Reads until EOF (or, with `until_disconnect`, a trailing `disconnect`), after `leftover`.
fn read_rest(mut s: TcpStream, leftover: Vec<u8>, until_disconnect: bool) -> Vec<u8> {
    let mut got = leftover;
    let mut chunk = vec![0u8; 65536];
    while !(until_disconnect && got.ends_with(b"10.disconnect;")) {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
    got
}

fn serve_replay(mut s: TcpStream, opts: &ReplayOptions) -> Option<UpstreamConn> {
    let mut seen = UpstreamConn::default();
    let mut r = Reader::new();
    let (select, _) = r.next(&mut s)?;
    assert_eq!(select.opcode(), "select");
    let mut args = vec!["args".to_string()];
    args.extend(fake_args());
    s.write_all(&encode(&args)).ok()?;
    loop {
        let (ins, _) = r.next(&mut s)?;
        let done = ins.opcode() == "connect";
        seen.handshake.push(ins);
        if done {
            break;
        }
    }
    // The client's bytes, read on the side until EOF or `disconnect`.
    let rs = s.try_clone().ok()?;
    let leftover = std::mem::take(&mut r.buf);
    let reader = std::thread::spawn(move || read_rest(rs, leftover, true));
    let mut out = encode(&["ready", "$fake-connection-id"]);
    if opts.bulk {
        for (raw, op) in raw_instructions(&opts.recording) {
            if op != "mouse" && op != "key" {
                out.extend_from_slice(&raw);
            }
        }
    }
    let mut sent = 0;
    let mut rng = crate::util::rng::Rng::new(12345);
    let mut wrote_ok = true;
    let replay = if opts.bulk {
        Vec::new()
    } else {
        raw_instructions(&opts.recording)
    };
    for (i, (raw, op)) in replay.into_iter().enumerate() {
        if op == "mouse" || op == "key" {
            continue;
        }
        out.extend_from_slice(&raw);
        if opts.nop_every > 0 && i % opts.nop_every == 0 {
            out.extend_from_slice(b"3.nop;");
        }
        // Write in odd-sized pieces so instructions straddle reads.
        let piece = rng.between(1, 9001) as usize;
        if out.len() - sent >= piece {
            wrote_ok &= s.write_all(&out[sent..]).is_ok();
            sent = out.len();
        }
        if opts.pace_ms_per_100 > 0 && i % 100 == 0 {
            std::thread::sleep(Duration::from_millis(opts.pace_ms_per_100));
        }
        if !wrote_ok {
            break;
        }
    }
    if wrote_ok {
        for piece in out[sent..].chunks(64 * 1024) {
            if s.write_all(piece).is_err() {
                break;
            }
        }
    }
    if opts.wait_for_disconnect {
        let got = reader.join().ok()?;
        seen.received_after_connect = got;
    }
    out.extend_from_slice(b"10.disconnect;");
    let _ = s.write_all(b"10.disconnect;");
    let _ = s.shutdown(Shutdown::Both);
    seen.sent_after_args = out;
    Some(seen)
}

/// What the test client saw.
#[derive(Debug, Default)]
pub struct ClientResult {
    /// Every byte received (from `args` on).
    pub received: Vec<u8>,
    /// The `args` received.
    pub args: Vec<String>,
    /// The `error` received instead of `ready`, if any.
    pub error: Option<Instruction>,
    /// Handshake instructions sent after `args`, `connect` included (values as sent).
    pub sent_handshake: Vec<Vec<String>>,
    /// Bytes sent after `connect`.
    pub sent_after_connect: Vec<u8>,
    /// (opcode, args) of the input events sent, in order.
    pub events: Vec<(String, Vec<String>)>,
}

/// Client options.
#[derive(Clone, Default)]
pub struct ClientOptions {
    /// What the client selects: a protocol, or `$ID` to join a connection (`None`: `vnc`).
    pub select: Option<String>,
    /// Connection parameters by name (ours included).
    pub params: HashMap<String, String>,
    /// The recording whose `mouse`/`key` instructions the client sends (as client input).
    pub events_from: Option<Arc<Vec<u8>>>,
}

/// Runs a client session against `addr`: handshake, then sends input events while reading
/// everything until the server closes.
pub fn run_client(addr: &str, opts: &ClientOptions) -> ClientResult {
    let mut res = ClientResult::default();
    let mut s = TcpStream::connect(addr).expect("connect tap");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let select = opts.select.as_deref().unwrap_or("vnc");
    s.write_all(&encode(&["select", select])).unwrap();
    let mut r = Reader::new();
    let Some((first, raw)) = r.next(&mut s) else {
        return res;
    };
    res.received.extend_from_slice(&raw);
    if first.opcode() == "error" {
        res.error = Some(first);
        return res;
    }
    assert_eq!(first.opcode(), "args");
    res.args = first.args().to_vec();
    let mut connect = vec!["connect".to_string()];
    for name in &res.args {
        let v = if name.starts_with("VERSION_") {
            name.clone()
        } else {
            opts.params.get(name).cloned().unwrap_or_default()
        };
        connect.push(v);
    }
    let hs: Vec<Vec<String>> = vec![
        vec!["size".into(), "1024".into(), "768".into(), "96".into()],
        vec!["audio".into(), "audio/L16".into()],
        vec!["video".into()],
        vec!["image".into(), "image/png".into(), "image/jpeg".into()],
        vec!["timezone".into(), "Europe/Zürich".into()],
        vec!["name".into(), "tester".into()],
        connect,
    ];
    for ins in &hs {
        s.write_all(&encode(ins)).unwrap();
    }
    res.sent_handshake = hs;
    let Some((reply, raw)) = r.next(&mut s) else {
        return res;
    };
    res.received.extend_from_slice(&raw);
    if reply.opcode() == "error" {
        res.error = Some(reply);
        return res;
    }
    assert_eq!(reply.opcode(), "ready");
    // Everything from here on is read raw on the side.
    let rs = s.try_clone().unwrap();
    let leftover = std::mem::take(&mut r.buf);
    let reader = std::thread::spawn(move || read_rest(rs, leftover, false));
    let mut sent = Vec::new();
    if let Some(rec) = &opts.events_from {
        let mut batch = Vec::new();
        for (raw, op) in raw_instructions(rec) {
            if op != "mouse" && op != "key" {
                continue;
            }
            let (ins, _) = parse_instruction(&raw).unwrap().unwrap();
            // Client form: without guacd's timestamp.
            let n = if op == "mouse" { 3 } else { 2 };
            let args: Vec<String> = ins.args()[..n].to_vec();
            let mut elements = vec![op.clone()];
            elements.extend(args.iter().cloned());
            batch.extend_from_slice(&encode(&elements));
            res.events.push((op, args));
            if res.events.len() % 50 == 0 {
                batch.extend_from_slice(b"4.sync,1.0;");
                let _ = s.write_all(&batch);
                sent.extend_from_slice(&batch);
                batch.clear();
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let _ = s.write_all(&batch);
        sent.extend_from_slice(&batch);
    }
    let _ = s.write_all(b"10.disconnect;");
    sent.extend_from_slice(b"10.disconnect;");
    res.sent_after_connect = sent;
    let rest = reader.join().unwrap();
    res.received.extend_from_slice(&rest);
    res
}

/// Sends a raw prefix and returns everything received until the tap closes (or `wait`).
pub fn raw_exchange(addr: &str, bytes: &[u8], wait: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect tap");
    s.set_read_timeout(Some(wait)).unwrap();
    let _ = s.write_all(bytes);
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    got
}

/// What the in-memory sink was told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkEvent {
    Opened(String, u32),
    Sealed(String, u32, PathBuf, u64),
    Closed(String, EndReason),
    Rejoined(String, Rejoin),
    Refused(String, String),
    NotStarted(String, String),
}

/// An in-memory [`RecordingSink`] that can be told to fail.
#[derive(Default)]
pub struct MemorySink {
    pub events: Mutex<Vec<SinkEvent>>,
    /// The metadata of every session opened, in order.
    pub opened: Mutex<Vec<SessionMeta>>,
    sealed: Mutex<HashMap<String, u32>>,
    pub fail_open: AtomicBool,
    pub fail_seal: AtomicBool,
}

impl MemorySink {
    pub fn events(&self) -> Vec<SinkEvent> {
        self.events.lock().unwrap().clone()
    }
    /// The metadata a session was last opened with.
    pub fn meta(&self, session: &str) -> Option<SessionMeta> {
        let opened = self.opened.lock().unwrap();
        opened
            .iter()
            .rev()
            .find(|m| m.session_id == session)
            .cloned()
    }
    /// Sealed segments of a session, in the order reported.
    pub fn sealed(&self, session: &str) -> Vec<(u32, PathBuf, u64)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                SinkEvent::Sealed(s, i, p, b) if s == session => Some((i, p, b)),
                _ => None,
            })
            .collect()
    }
}

impl RecordingSink for MemorySink {
    fn open_session(&self, meta: &SessionMeta) -> Result<SessionStart, SinkError> {
        if self.fail_open.load(Ordering::SeqCst) {
            return Err(SinkError::Unavailable("simulated queue failure".into()));
        }
        let next = *self
            .sealed
            .lock()
            .unwrap()
            .get(&meta.session_id)
            .unwrap_or(&0);
        self.events
            .lock()
            .unwrap()
            .push(SinkEvent::Opened(meta.session_id.clone(), next));
        self.opened.lock().unwrap().push(meta.clone());
        Ok(SessionStart {
            session: 0,
            next_index: next,
        })
    }
    fn segment_sealed(
        &self,
        _session: u64,
        meta: &SessionMeta,
        index: u32,
        path: &Path,
        bytes: u64,
    ) -> Result<(), SinkError> {
        if self.fail_seal.load(Ordering::SeqCst) {
            return Err(SinkError::Unavailable("simulated queue failure".into()));
        }
        *self
            .sealed
            .lock()
            .unwrap()
            .entry(meta.session_id.clone())
            .or_insert(0) = index + 1;
        self.events.lock().unwrap().push(SinkEvent::Sealed(
            meta.session_id.clone(),
            index,
            path.to_path_buf(),
            bytes,
        ));
        Ok(())
    }
    fn session_closed(&self, meta: &SessionMeta, reason: EndReason) {
        self.events
            .lock()
            .unwrap()
            .push(SinkEvent::Closed(meta.session_id.clone(), reason));
    }
    fn rejoined(&self, meta: &SessionMeta, how: &Rejoin) {
        self.events
            .lock()
            .unwrap()
            .push(SinkEvent::Rejoined(meta.session_id.clone(), how.clone()));
    }
    fn refused(&self, meta: &SessionMeta, reason: &str) {
        self.events.lock().unwrap().push(SinkEvent::Refused(
            meta.session_id.clone(),
            reason.to_string(),
        ));
    }
    fn not_started(&self, meta: &SessionMeta, reason: &str) {
        self.events.lock().unwrap().push(SinkEvent::NotStarted(
            meta.session_id.clone(),
            reason.to_string(),
        ));
    }
}

/// The tap on its own thread.
pub struct TapHandle {
    pub addr: String,
    pub ctx: TapContext,
    pub admission: Arc<AdmissionState>,
    pub sink: Arc<MemorySink>,
    shutdown: Option<smol::channel::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Settings for tests: upstream, segments under `data`, a segment size.
pub fn test_settings(upstream: &str, data: &Path, segment_bytes_max: u64) -> TapSettings {
    TapSettings {
        upstream: upstream.to_string(),
        record_keys: true,
        record_by_default: true,
        segments_dir: data.join("segments"),
        segment_bytes_max,
        handshake_timeout: Duration::from_secs(10),
        connections_max: 1000,
        protocols: vec!["vnc".into()],
        upstream_probe_interval: Duration::from_millis(100),
    }
}

impl TapHandle {
    /// Starts the tap with an admitting gate (disk available).
    pub fn start(settings: TapSettings) -> Self {
        Self::start_with(settings, None)
    }

    /// Like [`Self::start`], publishing to `status`.
    pub fn start_with(
        settings: TapSettings,
        status: Option<session_recorder::status::StatusBoard>,
    ) -> Self {
        Self::start_on(settings, status, None)
    }

    /// Like [`Self::start_with`], handing sessions to `sink` when given (the
    /// [`MemorySink`] of the handle then sees nothing).
    pub fn start_on(
        settings: TapSettings,
        status: Option<session_recorder::status::StatusBoard>,
        sink: Option<Arc<dyn RecordingSink>>,
    ) -> Self {
        let admission = Arc::new(AdmissionState::new());
        admission.set_disk_state(DiskState::Available);
        let memory = Arc::new(MemorySink::default());
        let ctx = TapContext::new(
            settings,
            admission.clone(),
            sink.unwrap_or_else(|| memory.clone()),
            Arc::new(SystemClock),
            status,
        );
        let sink = memory;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, rx) = smol::channel::bounded::<()>(1);
        let ctx2 = ctx.clone();
        let thread = std::thread::Builder::new()
            .name("tap-exec".into())
            .spawn(move || {
                let ex = Rc::new(smol::LocalExecutor::new());
                let listener = smol::net::TcpListener::try_from(listener).unwrap();
                smol::block_on(ex.run(run_tap(ctx2, listener, ex.clone(), rx))).unwrap();
            })
            .unwrap();
        Self {
            addr,
            ctx,
            admission,
            sink,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// Stops the tap and waits for every connection to end.
    pub fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            tx.close();
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }

    /// Waits (bounded) until no connection is open.
    pub fn wait_idle(&self) {
        for _ in 0..2000 {
            if self.ctx.connections() == 0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("tap still has {} connections", self.ctx.connections());
    }
}

impl Drop for TapHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The segment files of a session, in index order.
pub fn segment_files(data: &Path, session: &str) -> Vec<PathBuf> {
    let dir = data.join("segments").join(session);
    let mut v: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| e.path()).collect(),
        Err(_) => return Vec::new(),
    };
    v.sort();
    v
}

/// CPU time (user + system, ms) used so far by this process's threads named `name`.
pub fn thread_cpu_ms(name: &str) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| e.ok())
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the `(comm)`: state is field 3; utime 14, stime 15 (clock ticks, 100/s).
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
        total += ticks * 10;
    }
    total
}

/// This process's open descriptors that belong to one rig: TCP sockets with an end on one of
/// `ports`, and files under `dir`. Other tests in the binary open and close descriptors of
/// their own meanwhile, so a process-wide count would not say whether this rig leaked.
pub fn fds_of(ports: &[u16], dir: &Path) -> usize {
    let mut inodes = std::collections::HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port = |addr: &str| {
                addr.rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            };
            let ours = [f.get(1), f.get(2)]
                .into_iter()
                .flatten()
                .any(|a| port(a).is_some_and(|p| ports.contains(&p)));
            if let (true, Some(inode)) = (ours, f.get(9)) {
                inodes.insert(format!("socket:[{inode}]"));
            }
        }
    }
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| t.starts_with(dir) || inodes.contains(&*t.to_string_lossy()))
        .count()
}

/// Connection parameters for a recorded session.
pub fn params(session: &str, required: Option<&str>) -> HashMap<String, String> {
    let mut p = HashMap::new();
    p.insert("hostname".into(), "desk-1".into());
    p.insert("port".into(), "5900".into());
    p.insert("recording-session-id".into(), session.into());
    p.insert("recording-user-id".into(), "u-42".into());
    p.insert("recording-username".into(), "alice".into());
    p.insert(
        "recording-image-friendly-name".into(),
        "Ubuntu Desktop".into(),
    );
    if let Some(r) = required {
        p.insert("recording-required".into(), r.into());
    }
    p
}

/// The instructions of a session's segments as guacd sent them: without the `sync` the first
/// segment begins with (the session's start on guacd's clock, no later than guacd's first
/// `sync`), nor the one each later segment begins with (a repeat of the `sync` its
/// predecessor ended on, at the roll). A segment left empty by a full disk adds nothing.
pub fn recorded_instructions(files: &[PathBuf]) -> Vec<(Vec<u8>, String)> {
    let sync_ts = |raw: &[u8]| -> u64 {
        let (i, _) = parse_instruction(raw).unwrap().unwrap();
        i.args()[0].parse().unwrap()
    };
    let mut out: Vec<(Vec<u8>, String)> = Vec::new();
    for (n, f) in files.iter().enumerate() {
        let mut ins = raw_instructions(&std::fs::read(f).unwrap()).into_iter();
        // A segment cut short by a full disk may hold nothing at all.
        let Some((lead, op)) = ins.next() else {
            continue;
        };
        assert_eq!(op, "sync", "segment {n} begins with a sync");
        let rest: Vec<_> = ins.collect();
        if n == 0 {
            if let Some(first) = rest.iter().find(|(_, op)| op == "sync") {
                assert!(sync_ts(&lead) <= sync_ts(&first.0), "the lead is no later");
            }
        } else {
            let ended = out
                .iter()
                .rev()
                .find(|(_, op)| op == "sync")
                .expect("a frame");
            assert_eq!(lead, ended.0, "segment {n} begins with the rolling sync");
        }
        out.extend(rest);
    }
    out
}
