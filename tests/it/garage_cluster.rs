//! The 3-node Garage cluster harness (tests/it/util/garage_cluster.rs) against the service's own S3
//! store: what is written through one node is read through another, every node holds a copy
//! (replication factor 3), one node down leaves reads and writes working (quorum 2), two down
//! do not, and a restarted node serves everything, including what was written while it was
//! away. The fleet-history tests build on this harness, so it is checked here first.

use crate::util::garage;
use crate::util::garage_cluster;

use std::io::Read;
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use garage::{sha256_hex, write_random_file};
use garage_cluster::{GarageCluster, cluster_or_skip};
use session_recorder::upload::store::CONTENT_TYPE_MP4;
use session_recorder::upload::{ObjectStore, PutOptions, open_store};

const MIB: usize = 1024 * 1024;
/// Bound on waits for background replication (polled, never slept through).
const REPLICATION_TIMEOUT: Duration = Duration::from_secs(60);

fn mp4(sha: &str) -> PutOptions {
    PutOptions {
        content_type: CONTENT_TYPE_MP4.into(),
        sha256_hex: sha.into(),
    }
}

fn store(c: &GarageCluster, i: usize) -> std::sync::Arc<dyn ObjectStore> {
    open_store(&c.settings(i, &c.bucket, "cluster/{session_id}/{clip_index}.mp4"))
        .expect("open store")
}

fn sha_of(store: &dyn ObjectStore, key: &str) -> String {
    let mut body = Vec::new();
    store
        .get(key, None)
        .expect("get")
        .read_to_end(&mut body)
        .expect("read body");
    sha256_hex(&body)
}

/// Bytes of every file under `dir` (a node's block store).
fn bytes_under(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => bytes_under(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

#[test]
fn cluster_of_three_replicates_and_survives_a_node_down() {
    let t0 = Instant::now();
    let Some(mut c) = cluster_or_skip("cluster_of_three", 3) else {
        return;
    };
    eprintln!("cluster of 3 up in {:?}", t0.elapsed());
    let endpoints = c.endpoints();
    assert_eq!(endpoints.len(), 3);
    assert!(
        endpoints[0] != endpoints[1]
            && endpoints[1] != endpoints[2]
            && endpoints[0] != endpoints[2],
        "each node has its own S3 port: {endpoints:?}"
    );
    let dir = tempfile::tempdir().unwrap();

    // Written through node 0, read through node 2. 3 MiB + a bit = four of garage's 1 MiB
    // blocks, so the object's data really lives in block files, not inline in the metadata.
    let len_a = 3 * MIB + 17;
    let path_a = dir.path().join("a.mp4");
    let sha_a = write_random_file(&path_a, len_a, 11);
    let (s0, s2) = (store(&c, 0), store(&c, 2));
    s0.put_file("cluster/a.mp4", &path_a, &mp4(&sha_a))
        .expect("put through node 0");
    let head = s2
        .head("cluster/a.mp4")
        .unwrap()
        .expect("visible on node 2");
    assert_eq!(head.size_bytes, len_a as u64);
    assert_eq!(head.sha256_hex.as_deref(), Some(sha_a.as_str()));
    assert_eq!(sha_of(s2.as_ref(), "cluster/a.mp4"), sha_a);

    // Replication factor 3: every node ends up with a full copy of the blocks (the write
    // returns after a quorum of 2; the third copy may land just after).
    let t = Instant::now();
    for i in 0..3 {
        while bytes_under(&c.data_dir(i)) < len_a as u64 {
            assert!(
                t.elapsed() < REPLICATION_TIMEOUT,
                "node {i} holds {} bytes of a {len_a}-byte object",
                bytes_under(&c.data_dir(i))
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    eprintln!("replicated on every node at {:?}", t0.elapsed());
    // Node 1 down (SIGTERM): it is really gone, and writes and reads go on through 0 and 2.
    let pid1 = c.pid(1).expect("node 1 running");
    c.stop_node(1);
    assert!(c.pid(1).is_none());
    assert!(
        !Path::new(&format!("/proc/{pid1}")).exists(),
        "node 1 (pid {pid1}) reaped"
    );
    assert!(
        TcpStream::connect(c.host_port(1)).is_err(),
        "nothing listens on node 1's S3 port"
    );
    let len_b = 2 * MIB + 5;
    let path_b = dir.path().join("b.mp4");
    let sha_b = write_random_file(&path_b, len_b, 12);
    s0.put_file("cluster/b.mp4", &path_b, &mp4(&sha_b))
        .expect("put through node 0 with node 1 down");
    assert_eq!(sha_of(s2.as_ref(), "cluster/b.mp4"), sha_b);
    assert_eq!(sha_of(s2.as_ref(), "cluster/a.mp4"), sha_a);
    let mut keys = c.list_keys(2, "cluster/");
    keys.sort();
    assert_eq!(keys, ["cluster/a.mp4", "cluster/b.mp4"]);

    // Two nodes down: a write cannot reach its quorum and is refused, which shows the quorum
    // really is 2 of 3 (with replication factor 1 some writes would still land on node 0).
    c.kill9_node(2);
    let code = c.curl_status(0, &format!("{}/cluster/c.bin", c.bucket));
    let status = c.curl_status(0, &format!("{}?list-type=2", c.bucket));
    eprintln!(
        "two nodes down at {:?}: get {code}, list {status}",
        t0.elapsed()
    );
    assert_ne!(
        code, 200,
        "a read of a missing key with one node of three is not an answer"
    );
    assert_ne!(
        status, 200,
        "a list with one node of three up must not succeed"
    );
    c.start_node(2);
    eprintln!("node 2 back at {:?}", t0.elapsed());

    // Node 1 back on the same directory and ports: it serves both objects, the one written
    // while it was down included (read with a quorum from the others if not resynced yet).
    c.start_node(1);
    let s1 = store(&c, 1);
    assert_eq!(sha_of(s1.as_ref(), "cluster/a.mp4"), sha_a);
    assert_eq!(sha_of(s1.as_ref(), "cluster/b.mp4"), sha_b);
    let mut keys = c.list_keys(1, "cluster/");
    keys.sort();
    assert_eq!(keys, ["cluster/a.mp4", "cluster/b.mp4"]);
    eprintln!("whole test in {:?}", t0.elapsed());
}
