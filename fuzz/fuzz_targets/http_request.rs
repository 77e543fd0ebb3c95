//! Raw bytes on the HTTP API's connection, through the real hyper server and axum router (with
//! a stand-in for the daemon behind it): any bytes get a response or a closed connection, never
//! a panic or a hang.
#![no_main]
use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::Duration,
};

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use watcher::{
    frontends::api::{self, Backend, Caller},
    model::{
        hold::HaltMode,
        ids::{HoldId, TraceId},
    },
};

struct Stub;

impl Backend for Stub {
    fn holds(&self) -> anyhow::Result<Value> {
        Ok(json!({"holds": []}))
    }
    fn hold(&self, id: &HoldId) -> anyhow::Result<Result<Value, String>> {
        Ok(Err(format!("no hold {id}")))
    }
    fn approve(
        &self,
        id: &HoldId,
        _: &str,
        _: bool,
        _: bool,
    ) -> anyhow::Result<Result<Value, String>> {
        Ok(Err(format!("no hold {id}")))
    }
    fn deny(&self, id: &HoldId, _: &str) -> anyhow::Result<Result<Value, String>> {
        Ok(Err(format!("no hold {id}")))
    }
    fn kill_switch(&self) -> anyhow::Result<Value> {
        Ok(json!({"engaged": false}))
    }
    fn engage(
        &self,
        traces: Vec<TraceId>,
        all: bool,
        _: HaltMode,
        _: &str,
    ) -> Result<Value, String> {
        if all || !traces.is_empty() {
            Ok(json!({"sessions": traces}))
        } else {
            Err("say which sessions".into())
        }
    }
    fn release(&self, _: &str) -> anyhow::Result<Value> {
        Ok(json!({"released": []}))
    }
    fn tcp_peer_watched(&self, _: SocketAddr, _: SocketAddr) -> bool {
        false
    }
}

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the caller: a unix-socket user, or a loopback peer with the token.
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let caller = if pick & 1 == 0 {
        Caller::User("fuzz".into())
    } else {
        Caller::Tcp {
            peer: "127.0.0.1:40000".parse().unwrap(),
            local: "127.0.0.1:7380".parse().unwrap(),
        }
    };
    let app = api::router(Arc::new(Stub), caller, Some(Arc::new(TOKEN.into())));
    let bytes = bytes.to_vec();
    runtime().block_on(async move {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let served = tokio::spawn(api::serve_connection(server, app));
        let (mut rd, mut wr) = tokio::io::split(&mut client);
        let write = async {
            let _ = wr.write_all(&bytes).await;
            let _ = wr.shutdown().await;
        };
        let mut out = Vec::new();
        let read = rd.read_to_end(&mut out);
        let done = tokio::time::timeout(Duration::from_secs(5), async {
            let (_, r) = tokio::join!(write, read);
            r
        })
        .await;
        assert!(
            done.is_ok(),
            "the API neither answered nor closed within 5 s"
        );
        let _ = served.await;
        if !out.is_empty() {
            assert!(
                out.starts_with(b"HTTP/1."),
                "not an HTTP response: {:?}",
                &out[..out.len().min(64)]
            );
        }
    });
});
