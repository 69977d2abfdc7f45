//! The upstream watch: guacd's reachability (a status problem and a metric) probed in the
//! background, and the configured protocols' `args` learned whenever guacd (re)appears.

use super::*;

/// Asks guacd for the `args` of each protocol in `protocols` not known yet (one short
/// connection each, no session is started) so that from the very first client on, a refused
/// session never reaches guacd. guacd logs each of these as a failed handshake, so only the
/// configured protocols are asked, once each. Protocols guacd does not know, or a guacd that
/// is down, are logged and skipped: the tap then learns the list from the first client.
pub async fn learn_args(ctx: &TapContext, protocols: &[&str]) {
    for protocol in protocols {
        if ctx.cached_args(protocol).is_some() {
            continue;
        }
        let select = crate::ingest::handshake::encode(&["select", protocol]);
        // Bounded like a client's handshake: something at the upstream address that accepts
        // and never answers must not stop the watch that called this.
        let asked = async { open_upstream(ctx, &select).await.map_err(|_| ()) }.or(async {
            Timer::after(ctx.settings.handshake_timeout).await;
            Err(())
        });
        match asked.await {
            Ok(up) => {
                ctx.remember_args(protocol, &up.args);
                log::info!(
                    "event=tap_args_learned protocol={protocol} args={}",
                    up.args.len()
                );
            }
            Err(_) => log::warn!("event=tap_args_not_learned protocol={protocol}"),
        }
    }
}

/// Watches guacd until `shutdown`: a bare TCP connect every probe interval (guacd logs
/// nothing for a connection that closes before `select`), so that guacd being down is a
/// status problem and a metric even while no session arrives, and clears once it is back.
/// Each time guacd becomes reachable (at start, or back after an outage) the configured
/// protocols' `args` not known yet are learned.
pub async fn watch_upstream(ctx: TapContext, shutdown: Receiver<()>) {
    let protocols: Vec<String> = ctx.settings.protocols.clone();
    let protocols: Vec<&str> = protocols.iter().map(String::as_str).collect();
    loop {
        let probe = connect_upstream(&ctx.settings.upstream).await;
        if ctx.note_upstream(probe.as_ref().map(|_| ())) {
            learn_args(&ctx, &protocols).await;
        }
        drop(probe);
        let stopped = async {
            Timer::after(ctx.settings.upstream_probe_interval).await;
            false
        }
        .or(async {
            let _ = shutdown.recv().await;
            true
        })
        .await;
        if stopped {
            return;
        }
    }
}

/// A TCP connection to guacd, bounded by the connect timeout.
pub(super) async fn connect_upstream(addr: &str) -> std::io::Result<TcpStream> {
    async { TcpStream::connect(addr).await }
        .or(async {
            Timer::after(Duration::from_millis(TAP_UPSTREAM_CONNECT_TIMEOUT_MS)).await;
            Err(std::io::ErrorKind::TimedOut.into())
        })
        .await
}
