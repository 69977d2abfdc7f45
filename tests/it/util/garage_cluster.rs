//! Test harness: a real Garage cluster of N nodes on 127.0.0.1 (replication factor N), each node
//! with its own ports and directory, for tests of what must survive a store node going away
//! (the fleet history). Nodes are started, stopped (SIGTERM) and killed (SIGKILL) by PID;
//! dropping the cluster kills and reaps every node.
//!
//! The single-node helper (`garage.rs`, via scripts/s3-test-server) stays the one most tests
//! use; this one drives the `garage` binary directly because a cluster needs the nodes' ids
//! before the layout can be written. Same region (`us-east-1`), same bucket name, same curl
//! helpers, so a test can check what the store really holds independently of the code under
//! test, through any node.
//!
//! Nothing here sleeps a fixed time to "let the cluster settle": every wait polls a real
//! condition (RPC up, S3 answering with the key) with a bounded timeout, so it stays fast on an
//! idle machine and correct on a loaded one.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use session_recorder::upload::{Secret, UploadSettings};

use super::s3curl;

/// Region every node signs with (the single-node helper's, and the service's default).
pub const REGION: &str = "us-east-1";
/// Bucket created on start (the single-node helper's name).
pub const BUCKET: &str = "recordings";
/// How long a cluster start-up step may take on a loaded 2-core machine before the test fails.
const STEP_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a node gets to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Delay between two polls of a condition.
const POLL: Duration = Duration::from_millis(50);

/// Whether `garage` is on PATH.
pub fn garage_found() -> bool {
    Command::new("sh")
        .args(["-c", "command -v garage"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Starts a fresh cluster of `nodes`, or returns `None` (after saying so) when `garage` is
/// missing and `SESSION_RECORDER_SKIP_S3=1`. Panics with instructions when it is missing
/// otherwise.
pub fn cluster_or_skip(test: &str, nodes: usize) -> Option<GarageCluster> {
    if !garage_found() {
        if std::env::var("SESSION_RECORDER_SKIP_S3").as_deref() == Ok("1") {
            eprintln!("SKIPPED {test}: garage not on PATH and SESSION_RECORDER_SKIP_S3=1");
            return None;
        }
        panic!(
            "{test} needs the Garage S3 server: `garage` is not on PATH. Run \
             scripts/install-garage (or set SESSION_RECORDER_SKIP_S3=1 to skip S3 tests)"
        );
    }
    Some(GarageCluster::start(nodes))
}

/// Whether a process exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// `len` random bytes as hex.
fn rand_hex(len: usize) -> String {
    let mut bytes = vec![0u8; len];
    std::io::Read::read_exact(
        &mut File::open("/dev/urandom").expect("open /dev/urandom"),
        &mut bytes,
    )
    .expect("read /dev/urandom");
    hex::encode(bytes)
}

/// Polls `f` until it returns `Some`, at most `timeout`; panics naming `what` (and `log`'s tail).
fn poll<T>(what: &str, timeout: Duration, log: &[&Path], mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if t0.elapsed() > timeout {
            let mut tails = String::new();
            for path in log {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                tails.push_str(&format!("\n--- {} ---\n", path.display()));
                for line in tail.iter().rev() {
                    tails.push_str(line);
                    tails.push('\n');
                }
            }
            panic!("garage cluster: {what} not done after {timeout:?}{tails}");
        }
        std::thread::sleep(POLL);
    }
}

/// One node: its directory, config, ports and process.
pub struct Node {
    /// Holds `garage.toml`, `meta/`, `data/`, `garage.log`.
    pub dir: PathBuf,
    /// `http://127.0.0.1:PORT` of its S3 API.
    pub endpoint: String,
    /// Its RPC address, `127.0.0.1:PORT`.
    pub rpc_addr: String,
    /// Full node id (hex), known after the first start.
    pub id: String,
    child: Option<Child>,
}

impl Node {
    fn config(&self) -> PathBuf {
        self.dir.join("garage.toml")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("garage.log")
    }

    /// Runs the garage CLI against this node.
    fn cli(&self, args: &[&str]) -> Output {
        Command::new("garage")
            .arg("-c")
            .arg(self.config())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run garage")
    }

    /// Runs the garage CLI against this node; its stdout when it succeeded.
    fn cli_ok(&self, args: &[&str]) -> Option<String> {
        let out = self.cli(args);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn spawn(&mut self) {
        assert!(
            self.child.is_none(),
            "node {} already running",
            self.dir.display()
        );
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("open garage.log");
        let child = Command::new("garage")
            .arg("-c")
            .arg(self.config())
            .arg("server")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("spawn garage server");
        self.child = Some(child);
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal`, waits up to `timeout` for the exit (SIGKILL after it), reaps.
    fn end(&mut self, signal: i32, timeout: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on the PID of a child we spawned and have not reaped yet.
        unsafe { libc::kill(child.id() as i32, signal) };
        let t0 = Instant::now();
        loop {
            if child.try_wait().expect("wait for garage").is_some() {
                return;
            }
            if t0.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A running Garage cluster: one access key, one bucket it may read, write and own.
pub struct GarageCluster {
    /// Holds one directory per node; removed on drop.
    pub root: tempfile::TempDir,
    pub nodes: Vec<Node>,
    pub bucket: String,
    pub key: String,
    pub secret: String,
    pub region: String,
}

impl GarageCluster {
    /// Starts `nodes` nodes with replication factor `nodes`, connects them, assigns and applies
    /// a layout with every node (one zone each), creates the key and the bucket, and returns
    /// once S3 answers with that key on every node.
    pub fn start(nodes: usize) -> Self {
        assert!(nodes >= 1, "a cluster needs a node");
        assert!(nodes <= 7, "garage allows replication factor up to 7");
        let root = tempfile::Builder::new()
            .prefix("garage-cluster-")
            .tempdir()
            .expect("tempdir");
        let rpc_secret = rand_hex(32);
        // Bind every port at once before releasing them, so no two nodes get the same one.
        let listeners: Vec<TcpListener> = (0..2 * nodes)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
            .collect();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().expect("addr").port())
            .collect();
        drop(listeners);
        let mut cluster = GarageCluster {
            nodes: Vec::with_capacity(nodes),
            bucket: BUCKET.to_string(),
            key: format!("GK{}", rand_hex(12)),
            secret: rand_hex(32),
            region: REGION.to_string(),
            root,
        };
        for i in 0..nodes {
            let dir = cluster.root.path().join(format!("node{i}"));
            std::fs::create_dir_all(&dir).expect("node dir");
            let node = Node {
                dir,
                endpoint: format!("http://127.0.0.1:{}", ports[2 * i]),
                rpc_addr: format!("127.0.0.1:{}", ports[2 * i + 1]),
                id: String::new(),
                child: None,
            };
            write_config(&node, nodes, &rpc_secret, &[]);
            cluster.nodes.push(node);
        }
        for node in &mut cluster.nodes {
            node.spawn();
        }
        cluster.learn_ids();
        // Every node's config names the others, so a restarted node finds the cluster by itself
        // (garage also keeps a peer list in its metadata dir; this does not depend on it).
        let peers: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("{}@{}", n.id, n.rpc_addr))
            .collect();
        for node in &cluster.nodes {
            write_config(node, nodes, &rpc_secret, &peers);
        }
        cluster.connect_and_layout();
        cluster.create_key_and_bucket();
        for i in 0..nodes {
            cluster.wait_s3(i);
        }
        cluster
    }

    /// Waits until each node's RPC answers and records its id.
    fn learn_ids(&mut self) {
        for node in &mut self.nodes {
            let log = node.log();
            let id = poll("node RPC up", STEP_TIMEOUT, &[&log], || {
                let pid = node.pid().expect("running");
                assert!(
                    alive(pid),
                    "garage node exited during start-up: {}",
                    tail(&log)
                );
                node.cli_ok(&["status"])?;
                let out = node.cli_ok(&["node", "id", "-q"])?;
                let id = out.trim().split('@').next()?.to_string();
                (id.len() == 64).then_some(id)
            });
            node.id = id;
        }
    }

    /// Connects node 0 to every other node, then assigns all of them and applies the layout.
    fn connect_and_layout(&self) {
        let first = &self.nodes[0];
        let logs = self.logs();
        let logs: Vec<&Path> = logs.iter().map(PathBuf::as_path).collect();
        for node in &self.nodes[1..] {
            let peer = format!("{}@{}", node.id, node.rpc_addr);
            poll("node connect", STEP_TIMEOUT, &logs, || {
                first.cli_ok(&["node", "connect", &peer])
            });
        }
        for (i, node) in self.nodes.iter().enumerate() {
            let zone = format!("dc{}", i + 1);
            poll("layout assign", STEP_TIMEOUT, &logs, || {
                first.cli_ok(&["layout", "assign", "-z", &zone, "-c", "1G", &node.id])
            });
        }
        poll("layout apply", STEP_TIMEOUT, &logs, || {
            first.cli_ok(&["layout", "apply", "--version", "1"])
        });
    }

    /// Imports the key, creates the bucket and allows the key on it (retried: until every node
    /// has the layout, table writes may miss their quorum).
    fn create_key_and_bucket(&self) {
        let first = &self.nodes[0];
        let logs = self.logs();
        let logs: Vec<&Path> = logs.iter().map(PathBuf::as_path).collect();
        poll("key import", STEP_TIMEOUT, &logs, || {
            first.cli_ok(&[
                "key",
                "import",
                "--yes",
                "-n",
                "test-key",
                &self.key,
                &self.secret,
            ])
        });
        poll("bucket create", STEP_TIMEOUT, &logs, || {
            first
                .cli_ok(&["bucket", "create", &self.bucket])
                .or_else(|| first.cli_ok(&["bucket", "info", &self.bucket]))
        });
        poll("bucket allow", STEP_TIMEOUT, &logs, || {
            first.cli_ok(&[
                "bucket",
                "allow",
                "--read",
                "--write",
                "--owner",
                &self.bucket,
                "--key",
                "test-key",
            ])
        });
    }

    fn logs(&self) -> Vec<PathBuf> {
        self.nodes.iter().map(Node::log).collect()
    }

    /// Every node's S3 endpoint, in node order.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.endpoint.clone()).collect()
    }

    /// `host:port` of node `i`'s S3 API.
    pub fn host_port(&self, i: usize) -> String {
        self.nodes[i]
            .endpoint
            .trim_start_matches("http://")
            .to_string()
    }

    /// PID of node `i` while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].pid()
    }

    /// Node `i`'s data directory (where its copies of object blocks live).
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.nodes[i].dir.join("data")
    }

    /// Stops node `i` gracefully (SIGTERM by PID, SIGKILL after 10 s) and reaps it.
    pub fn stop_node(&mut self, i: usize) {
        self.nodes[i].end(libc::SIGTERM, STOP_TIMEOUT);
    }

    /// Kills node `i` with SIGKILL, by PID, and reaps it.
    pub fn kill9_node(&mut self, i: usize) {
        assert!(self.nodes[i].child.is_some(), "node {i} is not running");
        self.nodes[i].end(libc::SIGKILL, STOP_TIMEOUT);
    }

    /// Starts node `i` again on the same directory and ports; returns once its S3 API answers
    /// with the key (which needs it to be back in the cluster: the bucket and key tables are
    /// read with a quorum).
    pub fn start_node(&mut self, i: usize) {
        self.nodes[i].spawn();
        self.wait_s3(i);
    }

    /// Waits until node `i` answers a signed ListObjectsV2 of the bucket with 200.
    pub fn wait_s3(&self, i: usize) {
        let node = &self.nodes[i];
        let log = node.log();
        poll("S3 API answering", STEP_TIMEOUT, &[&log], || {
            let pid = node.pid().expect("node running");
            assert!(alive(pid), "garage node {i} exited: {}", tail(&log));
            let code = self.curl_status(i, &format!("{}?list-type=2&max-keys=1", self.bucket));
            (code == 200).then_some(())
        });
    }

    /// Settings for an `s3://bucket@127.0.0.1:port/<template>` location on node `i`, over plain
    /// HTTP.
    pub fn settings(&self, i: usize, bucket: &str, template: &str) -> UploadSettings {
        UploadSettings {
            location: format!("s3://{bucket}@{}/{template}", self.host_port(i)),
            access_key: self.key.clone(),
            secret_key: Secret::new(self.secret.clone()),
            region: self.region.clone(),
            allow_http: true,
            path_style: true,
            ..UploadSettings::default()
        }
    }

    fn curl_cmd(&self, i: usize, extra: &[&str], path_and_query: &str) -> Command {
        let mut cmd = s3curl::command(
            &self.nodes[i].endpoint,
            &self.region,
            (&self.key, &self.secret),
            extra,
            path_and_query,
        );
        cmd.args(["--max-time", "30"]);
        cmd
    }

    /// HTTP status of a signed GET through node `i` (0 when there was no answer).
    pub fn curl_status(&self, i: usize, path_and_query: &str) -> u16 {
        let out = self
            .curl_cmd(
                i,
                &["-o", "/dev/null", "-w", "%{http_code}"],
                path_and_query,
            )
            .output()
            .expect("run curl");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }

    /// Runs curl with SigV4 through node `i` against `path_and_query`; returns stdout.
    pub fn curl(&self, i: usize, extra: &[&str], path_and_query: &str) -> String {
        let cmd = self.curl_cmd(i, extra, path_and_query);
        s3curl::stdout(cmd, &format!("curl through node {i}"))
    }

    /// Keys in the bucket under `prefix`, listed through node `i` (ListObjectsV2 with curl).
    pub fn list_keys(&self, i: usize, prefix: &str) -> Vec<String> {
        let prefix = prefix.replace('/', "%2F");
        let xml = self.curl(
            i,
            &[],
            &format!("{}?list-type=2&prefix={prefix}", self.bucket),
        );
        assert!(
            xml.contains("<ListBucketResult"),
            "list through node {i} failed: {xml}"
        );
        s3curl::xml_values(&xml, "Key")
    }
}

impl Drop for GarageCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.end(libc::SIGKILL, STOP_TIMEOUT);
        }
    }
}

/// Writes node `node`'s config: its ports and dirs, the shared RPC secret, the peers it knows.
fn write_config(node: &Node, replication_factor: usize, rpc_secret: &str, peers: &[String]) {
    let dir = node.dir.display();
    let s3 = node.endpoint.trim_start_matches("http://");
    let peers: Vec<String> = peers.iter().map(|p| format!("\"{p}\"")).collect();
    let text = format!(
        r#"metadata_dir = "{dir}/meta"
data_dir = "{dir}/data"
db_engine = "sqlite"
replication_factor = {replication_factor}
# Test data is random: skip zstd so block files hold exactly the object bytes.
compression_level = "none"
rpc_bind_addr = "{rpc}"
rpc_public_addr = "{rpc}"
rpc_secret = "{rpc_secret}"
bootstrap_peers = [{peers}]

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "{s3}"
"#,
        rpc = node.rpc_addr,
        peers = peers.join(", "),
    );
    std::fs::write(node.config(), text).expect("write garage.toml");
}

/// The last lines of a log file.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
