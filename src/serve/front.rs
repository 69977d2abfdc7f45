//! The network-facing front of the HTTP server: accepts TCP connections (terminating TLS with
//! rustls 0.23 when configured), enforces the request limits tiny_http does not have (head size,
//! header count, body size, target length, slow-loris timeouts, connection count), and relays
//! well-formed requests to tiny_http listening on a private unix socket, each on its own
//! upstream connection (see `relay` for why).
//!
//! Runs on one dedicated thread with a smol `LocalExecutor`; it only moves bytes and never
//! touches the pipeline. Request handling happens on tiny_http's side (see `mod.rs`).
//! A request that breaks a limit is answered here (400/411/413/414/431/505) and the connection
//! closed, after the responses to the earlier requests on it have been relayed.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use smol::future;
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::net::unix::UnixStream;
use smol::net::{TcpListener, TcpStream};
use smol::{LocalExecutor, Timer};

use crate::limits::{
    HTTP_BODY_BYTES_MAX, HTTP_CONNECTIONS_MAX, HTTP_HEAD_BYTES_MAX, HTTP_HEAD_TIMEOUT_MS,
    HTTP_HEADERS_MAX, HTTP_IDLE_TIMEOUT_MS, HTTP_SEND_BUFFER_BYTES, HTTP_TARGET_CHARS_MAX,
    HTTP_WRITE_TIMEOUT_MS,
};

/// The header the front adds with the client's address (any copy sent by a client is dropped).
pub const PEER_HEADER: &str = "X-Sr-Peer";

/// A request refused by the front, answered with `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject {
    /// HTTP status code.
    pub status: u16,
    /// Reason phrase and body text.
    pub reason: &'static str,
}

/// After refusing a request, how long and how much of the client's remaining input is drained.
const LINGER_MS: u64 = 2_000;
const LINGER_BYTES_MAX: usize = 1024 * 1024;

const BAD_REQUEST: Reject = Reject {
    status: 400,
    reason: "Bad Request",
};

/// The running front.
pub struct Front {
    stop: smol::channel::Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Front {
    /// Stops accepting, drops open connections, and joins the thread.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        let _ = self.stop.try_send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// Starts the front on `listener`, relaying to the unix socket `upstream`.
///
/// # Errors
/// The thread could not be spawned or the listener not registered.
pub fn spawn(
    listener: std::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    upstream: PathBuf,
) -> io::Result<Front> {
    listener.set_nonblocking(true)?;
    let (stop_tx, stop_rx) = smol::channel::bounded::<()>(1);
    let thread = std::thread::Builder::new()
        .name("http-front".into())
        .spawn(move || {
            let ex = Rc::new(LocalExecutor::new());
            let accept = accept_loop(ex.clone(), listener, tls, upstream, stop_rx);
            if let Err(e) = smol::block_on(ex.run(accept)) {
                log::error!("event=http_front_failed error={e}");
            }
        })?;
    Ok(Front {
        stop: stop_tx,
        thread: Some(thread),
    })
}

async fn accept_loop(
    ex: Rc<LocalExecutor<'static>>,
    listener: std::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    upstream: PathBuf,
    stop: smol::channel::Receiver<()>,
) -> io::Result<()> {
    let listener = TcpListener::try_from(listener)?;
    let acceptor = tls.map(futures_rustls::TlsAcceptor::from);
    let active = Rc::new(Cell::new(0usize));
    loop {
        let accepted = future::or(async { Some(listener.accept().await) }, async {
            let _ = stop.recv().await;
            None
        })
        .await;
        let (tcp, peer) = match accepted {
            None => return Ok(()),
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                // EMFILE and friends: back off instead of spinning.
                log::warn!("event=http_accept_failed error={e}");
                Timer::after(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        if let Err(e) = cap_send_buffer(&tcp) {
            log::debug!("event=http_send_buffer_not_capped peer={peer} error={e}");
        }
        if active.get() >= HTTP_CONNECTIONS_MAX {
            log::warn!("event=http_connection_refused peer={peer} reason=too_many_connections");
            ex.spawn(async move {
                let mut tcp = tcp;
                let r = Reject {
                    status: 503,
                    reason: "Service Unavailable",
                };
                let _ = with_timeout(HTTP_WRITE_TIMEOUT_MS, tcp.write_all(&reject_bytes(r))).await;
            })
            .detach();
            continue;
        }
        active.set(active.get() + 1);
        let (active, acceptor, upstream) = (active.clone(), acceptor.clone(), upstream.clone());
        ex.spawn(async move {
            serve_connection(tcp, peer, acceptor, upstream).await;
            active.set(active.get() - 1);
        })
        .detach();
    }
}

/// Fixes the kernel send buffer of a client socket at `HTTP_SEND_BUFFER_BYTES`. Linux would
/// otherwise grow it up to `net.ipv4.tcp_wmem`'s maximum (4 MiB by default) while a client is
/// not reading: kernel memory per connection stays bounded, and a client that stopped reading
/// is seen as stalled by the write timeout (a growing buffer looks like progress to it).
fn cap_send_buffer(tcp: &TcpStream) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let bytes = libc::c_int::try_from(HTTP_SEND_BUFFER_BYTES).unwrap_or(libc::c_int::MAX);
    // SAFETY: the descriptor belongs to `tcp`, open for the whole call; the option value is a
    // c_int that lives across the call and its exact size is passed.
    let rc = unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&raw const bytes).cast::<libc::c_void>(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: Option<futures_rustls::TlsAcceptor>,
    upstream: PathBuf,
) {
    match acceptor {
        None => relay(tcp, peer, &upstream).await,
        Some(acc) => match with_timeout(HTTP_HEAD_TIMEOUT_MS, acc.accept(tcp)).await {
            Ok(tls) => relay(tls, peer, &upstream).await,
            Err(e) => log::debug!("event=tls_handshake_failed peer={peer} error={e}"),
        },
    }
}

/// Relays one client connection to tiny_http, one request at a time, until either side ends.
///
/// Every request goes to tiny_http on a fresh upstream connection and says `Connection: close`
/// there. tiny_http serves each connection on a thread of its own pool until the connection
/// ends; with one request per upstream connection that thread is done as soon as the request
/// is read, however long the response takes and however long the client keeps its connection
/// open. (With one upstream connection per client, idle keep-alive clients and slow downloads
/// tied up those threads, and tiny_http 0.12's pool can leave a new connection queued until
/// one of them ends: the status page stopped answering.) The client keeps its keep-alive
/// connection; responses are self-delimiting (`Content-Length` or chunked).
async fn relay<S>(client: S, peer: SocketAddr, upstream: &PathBuf)
where
    S: smol::io::AsyncRead + smol::io::AsyncWrite + Unpin,
{
    let (mut cr, mut cw) = smol::io::split(client);
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let checked = match read_head(&mut cr, &mut buf, &mut chunk, peer).await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(reject) => {
                refuse(&mut cr, &mut cw, peer, reject).await;
                return;
            }
        };
        let up = match UnixStream::connect(upstream).await {
            Ok(u) => u,
            Err(e) => {
                log::error!("event=http_upstream_unreachable error={e}");
                break;
            }
        };
        let request = forward(&checked, &mut cr, &mut buf, &mut chunk, up.clone());
        let response = pump_responses(up, &mut cw);
        let (sent, relayed) = future::zip(request, response).await;
        if !sent || relayed.is_err() || !checked.keep_alive {
            break;
        }
    }
    let _ = with_timeout(HTTP_WRITE_TIMEOUT_MS, cw.close()).await;
}

/// Answers a request the front refuses, closes, and drains the client's input for a moment.
async fn refuse<R, W>(cr: &mut R, cw: &mut W, peer: SocketAddr, reject: Reject)
where
    R: smol::io::AsyncRead + Unpin,
    W: smol::io::AsyncWrite + Unpin,
{
    log::info!(
        "event=http_request_rejected peer={peer} status={}",
        reject.status
    );
    let _ = with_timeout(HTTP_WRITE_TIMEOUT_MS, cw.write_all(&reject_bytes(reject))).await;
    let _ = with_timeout(HTTP_WRITE_TIMEOUT_MS, cw.close()).await;
    // Lingering close: read (and drop) what the client is still sending for a moment, so the
    // kernel does not answer its unread bytes with a reset that destroys our reply.
    let mut sink = vec![0u8; 16 * 1024];
    let mut drained = 0usize;
    while drained < LINGER_BYTES_MAX {
        match with_timeout(LINGER_MS, cr.read(&mut sink)).await {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

async fn pump_responses<W>(mut up: UnixStream, cw: &mut W) -> io::Result<()>
where
    W: smol::io::AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = up.read(&mut buf).await?;
        if n == 0 {
            return with_timeout(HTTP_WRITE_TIMEOUT_MS, cw.flush()).await;
        }
        with_timeout(HTTP_WRITE_TIMEOUT_MS, cw.write_all(&buf[..n])).await?;
    }
}

/// Reads the next request head from the client (bytes already read are in `buf`) and checks
/// it. `Ok(None)` when the client ended cleanly or went idle; `Err` with the answer for a bad
/// request.
async fn read_head<R>(
    cr: &mut R,
    buf: &mut Vec<u8>,
    chunk: &mut [u8],
    peer: SocketAddr,
) -> Result<Option<Checked>, Reject>
where
    R: smol::io::AsyncRead + Unpin,
{
    let head_end = loop {
        while buf.starts_with(b"\r\n") {
            buf.drain(..2);
        }
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > HTTP_HEAD_BYTES_MAX {
            return Err(Reject {
                status: 431,
                reason: "Request Header Fields Too Large",
            });
        }
        let wait = if buf.is_empty() {
            HTTP_IDLE_TIMEOUT_MS
        } else {
            HTTP_HEAD_TIMEOUT_MS
        };
        match with_timeout(wait, cr.read(chunk)).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    if head_end > HTTP_HEAD_BYTES_MAX {
        return Err(Reject {
            status: 431,
            reason: "Request Header Fields Too Large",
        });
    }
    let checked = check_head(&buf[..head_end], peer)?;
    buf.drain(..head_end);
    Ok(Some(checked))
}

/// Writes a checked head and exactly its body to tiny_http; the bytes after the body stay in
/// `buf` for the next request. `false` when the client or tiny_http went away.
async fn forward<R>(
    checked: &Checked,
    cr: &mut R,
    buf: &mut Vec<u8>,
    chunk: &mut [u8],
    mut up: UnixStream,
) -> bool
where
    R: smol::io::AsyncRead + Unpin,
{
    if up.write_all(&checked.head).await.is_err() {
        return false;
    }
    let mut remaining = checked.body_len;
    while remaining > 0 {
        if buf.is_empty() {
            match with_timeout(HTTP_HEAD_TIMEOUT_MS, cr.read(chunk)).await {
                Ok(0) | Err(_) => {
                    // tiny_http sees the body end early and answers the request itself.
                    let _ = up.shutdown(Shutdown::Write);
                    return false;
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let n = usize::try_from(remaining).map_or(buf.len(), |r| r.min(buf.len()));
        if up.write_all(&buf[..n]).await.is_err() {
            return false;
        }
        buf.drain(..n);
        remaining -= n as u64;
    }
    true
}

/// A request head the front accepted, rewritten for tiny_http.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The head to forward: hop-by-hop headers and any client `X-Sr-Peer` dropped, ours and
    /// `Connection: close` added.
    pub head: Vec<u8>,
    /// The body length (`Content-Length`, 0 without).
    pub body_len: u64,
    /// Whether the client connection stays open after the response (HTTP/1.1 without
    /// `Connection: close`).
    pub keep_alive: bool,
}

/// Hop-by-hop headers: they describe the client's connection, not tiny_http's. `TE` in
/// particular would let a client make tiny_http buffer a whole zip in memory (`TE: identity`
/// on a body of unknown length).
const HOP_BY_HOP: [&str; 5] = [
    "connection",
    "keep-alive",
    "te",
    "upgrade",
    "proxy-connection",
];

/// Validates a request head and rewrites it for tiny_http (see [`Checked`]).
///
/// # Errors
/// The answer for a malformed or over-limit head.
pub fn check_head(head: &[u8], peer: SocketAddr) -> Result<Checked, Reject> {
    let text = std::str::from_utf8(head).map_err(|_| BAD_REQUEST)?;
    if !text.is_ascii() {
        return Err(BAD_REQUEST);
    }
    let mut lines = text.trim_end_matches("\r\n").split("\r\n");
    let request_line = lines.next().ok_or(BAD_REQUEST)?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(BAD_REQUEST);
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(BAD_REQUEST);
    }
    if !target.starts_with('/') || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(BAD_REQUEST);
    }
    if target.len() > HTTP_TARGET_CHARS_MAX {
        return Err(Reject {
            status: 414,
            reason: "URI Too Long",
        });
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(Reject {
            status: 505,
            reason: "HTTP Version Not Supported",
        });
    }
    let mut out = String::with_capacity(head.len() + 40);
    out.push_str(request_line);
    out.push_str("\r\n");
    let mut content_length: Option<u64> = None;
    let mut close_asked = false;
    let mut count = 0usize;
    for line in lines {
        count += 1;
        if count > HTTP_HEADERS_MAX {
            return Err(Reject {
                status: 431,
                reason: "Request Header Fields Too Large",
            });
        }
        let (name, value) = line.split_once(':').ok_or(BAD_REQUEST)?;
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(token) {
            return Err(BAD_REQUEST);
        }
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Reject {
                status: 411,
                reason: "Length Required",
            });
        }
        if name.eq_ignore_ascii_case("content-length") {
            if value.is_empty() || value.len() > 19 || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(BAD_REQUEST);
            }
            let n: u64 = value.parse().map_err(|_| BAD_REQUEST)?;
            if content_length.is_some_and(|c| c != n) {
                return Err(BAD_REQUEST);
            }
            if n > HTTP_BODY_BYTES_MAX {
                return Err(Reject {
                    status: 413,
                    reason: "Content Too Large",
                });
            }
            content_length = Some(n);
        }
        if name.eq_ignore_ascii_case("connection") {
            close_asked |= value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("close"));
        }
        if name.eq_ignore_ascii_case(PEER_HEADER)
            || HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
        {
            continue;
        }
        out.push_str(name);
        out.push_str(": ");
        out.push_str(value);
        out.push_str("\r\n");
    }
    out.push_str(PEER_HEADER);
    out.push_str(": ");
    out.push_str(&peer.ip().to_string());
    out.push_str("\r\nConnection: close\r\n\r\n");
    Ok(Checked {
        head: out.into_bytes(),
        body_len: content_length.unwrap_or(0),
        // HTTP/1.0 clients get tiny_http's 1.0 answers, which do not promise keep-alive.
        keep_alive: version == "HTTP/1.1" && !close_asked,
    })
}

fn reject_bytes(r: Reject) -> Vec<u8> {
    format!(
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{}\n",
        r.status,
        r.reason,
        r.reason.len() + 1,
        r.reason
    )
    .into_bytes()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `f`, or `TimedOut` once `ms` have passed. The deadline is polled first: woken by the timer,
/// a write to a client that stopped reading can still squeeze its last bytes into the send
/// buffer (Linux reports writability only once much of it is free, but accepts a smaller
/// write before that); that must not count as progress that restarts the next write's clock
/// (it doubled the time a stalled client kept its stream).
async fn with_timeout<T>(ms: u64, f: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    future::or(
        async {
            Timer::after(Duration::from_millis(ms)).await;
            Err(io::ErrorKind::TimedOut.into())
        },
        f,
    )
    .await
}

/// Builds the rustls server config from PEM files.
///
/// # Errors
/// Unreadable files, no certificate, no key, or a key that does not fit the certificate.
pub fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<rustls::ServerConfig, String> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", cert.display()));
    }
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| format!("{}: {e}", key.display()))?
        .ok_or_else(|| format!("{}: no private key found", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key: {e}"))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "192.0.2.7:5555".parse().unwrap()
    }

    #[test]
    fn good_head_is_forwarded_with_our_peer_header() {
        let c = check_head(
            b"POST /login HTTP/1.1\r\nHost: x\r\nX-Sr-Peer: 1.2.3.4\r\nContent-Length: 5\r\n\r\n",
            peer(),
        )
        .unwrap();
        let h = String::from_utf8(c.head).unwrap();
        assert_eq!(c.body_len, 5);
        assert!(c.keep_alive);
        assert!(h.contains("X-Sr-Peer: 192.0.2.7\r\n"), "{h}");
        assert!(!h.contains("1.2.3.4"), "{h}");
        assert!(h.ends_with("\r\nConnection: close\r\n\r\n"), "{h}");
    }

    #[test]
    fn hop_by_hop_headers_stay_with_the_client() {
        let c = check_head(
            b"GET /sessions/x/zip HTTP/1.1\r\nHost: x\r\nTE: identity\r\nConnection: keep-alive, TE\r\n\
              Keep-Alive: timeout=5\r\nUpgrade: h2c\r\n\r\n",
            peer(),
        )
        .unwrap();
        let h = String::from_utf8(c.head).unwrap().to_ascii_lowercase();
        for gone in ["te:", "keep-alive", "upgrade", "h2c", "identity"] {
            assert!(!h.contains(gone), "{gone} forwarded: {h}");
        }
        assert_eq!(h.matches("connection:").count(), 1, "{h}");
        assert!(c.keep_alive);
        let close = |head: &[u8]| !check_head(head, peer()).unwrap().keep_alive;
        assert!(close(b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n"));
        assert!(close(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(close(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
    }

    #[test]
    fn bad_heads_get_named_statuses() {
        let st = |h: &[u8]| {
            check_head(h, peer())
                .map(|_| 0)
                .unwrap_or_else(|r| r.status)
        };
        assert_eq!(st(b"GARBAGE\r\n\r\n"), 400);
        assert_eq!(st(b"GET x HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(st(b"GET / HTTP/2.0\r\n\r\n"), 505);
        assert_eq!(st(b"GET / HTTP/1.1\r\nNo colon\r\n\r\n"), 400);
        assert_eq!(
            st(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            411
        );
        assert_eq!(
            st(b"POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"),
            413
        );
        assert_eq!(
            st(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            400
        );
        let long = format!(
            "GET /{} HTTP/1.1\r\n\r\n",
            "a".repeat(HTTP_TARGET_CHARS_MAX)
        );
        assert_eq!(st(long.as_bytes()), 414);
        let many: String = (0..=HTTP_HEADERS_MAX)
            .map(|i| format!("H{i}: v\r\n"))
            .collect();
        assert_eq!(st(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()), 431);
        assert_eq!(st("GET /é HTTP/1.1\r\n\r\n".as_bytes()), 400);
    }
}
