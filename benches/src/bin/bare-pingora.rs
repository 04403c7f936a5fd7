//! The floor under flynn-router's numbers in `benches/load.sh`: pingora's proxy with nothing of
//! ours (no table, no headers, no metrics, no sticky, no drain), one fixed backend, the same
//! allocator, runtime, pool settings and (no) downstream modules as the router.
//!
//! `bare-pingora LISTEN BACKEND` (both `host:port`).

use async_trait::async_trait;
use pingora::prelude::{HttpPeer, ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    backend: String,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    /// As the router: no (disabled) compression module.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.backend.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(backend)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: bare-pingora LISTEN BACKEND");
    };
    let conf = ServerConf {
        threads: 1,
        upstream_keepalive_pool_size: 1024,
        upgrade_sock: format!("/tmp/bare-pingora-{}.sock", std::process::id()),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, Bare { backend });
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever()
}
