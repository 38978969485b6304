//! The quota API as `zhisuan api --backend world` runs it, served in
//! process on a loopback port (tests and the gateway bench).
#![allow(dead_code)]

use std::net::SocketAddr;

/// Serves a standalone API (its simulated cluster, the ledger at `db`) on
/// the current runtime; its address and state.
pub async fn serve_here(
    config: zhisuan::api::ApiConfig,
    db: &str,
) -> (SocketAddr, zhisuan::api::ApiState) {
    let state = zhisuan::cmd::api::standalone(config, db, None, &prometheus::Registry::new())
        .map(|s| s.state)
        .expect("state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = state.clone();
    tokio::spawn(async move {
        let app = zhisuan::api::router(serving).into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(listener, app).await.unwrap();
    });
    (addr, state)
}

/// [`serve_here`] on `runtime`, from outside it.
pub fn serve(
    runtime: &tokio::runtime::Runtime,
    config: zhisuan::api::ApiConfig,
    db: &str,
) -> (SocketAddr, zhisuan::api::ApiState) {
    runtime.block_on(serve_here(config, db))
}
