//! Server-side TLS with rustls (ring provider), shared by the sidecar's HTTP and gRPC
//! listeners and the inject webhook: PEM certificate chain and key, an optional CA bundle
//! whose client certificates are then required (mTLS), and reloading when the files change
//! (a renewed certificate is picked up without a restart; connections already open keep the
//! configuration they were accepted with).

use anyhow::Context as _;
use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::TlsAcceptor;

/// How often the files are looked at for changes.
pub const RELOAD_EVERY: Duration = Duration::from_millis(500);

/// The files a TLS listener is configured from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificates signed by one of these CAs are required (mTLS).
    pub client_ca: Option<PathBuf>,
}

/// ALPN protocols: the HTTP listener speaks both versions, gRPC only HTTP/2.
pub const ALPN_HTTP: &[&[u8]] = &[b"h2", b"http/1.1"];
pub const ALPN_H2: &[&[u8]] = &[b"h2"];

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {what} {}", path.display()))
}

/// The contents of the files, compared to see whether anything changed.
fn contents(files: &TlsFiles) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut out = vec![read(&files.cert, "TLS certificate")?, read(&files.key, "TLS key")?];
    if let Some(ca) = &files.client_ca {
        out.push(read(ca, "TLS client CA bundle")?);
    }
    Ok(out)
}

/// A rustls server configuration from PEM bytes: the certificate chain, the private key, and
/// the client CA bundle when mTLS is wanted.
fn build(files: &TlsFiles, pem: &[Vec<u8>], alpn: &[&[u8]]) -> anyhow::Result<ServerConfig> {
    let (cert_pem, key_pem) = match pem {
        [c, k, ..] => (c, k),
        _ => anyhow::bail!("TLS: certificate and key needed"),
    };
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("TLS certificate {}: {e}", files.cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!("TLS certificate {}: no CERTIFICATE block", files.cert.display());
    }
    let key_der =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| anyhow::anyhow!("TLS key {}: {e}", files.key.display()))?;
    // The provider is named explicitly, so that it does not matter which rustls crypto
    // features other crates enable.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match (&files.client_ca, pem.get(2)) {
        (Some(ca_path), Some(ca_pem)) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca_pem) {
                let cert = cert.map_err(|e| anyhow::anyhow!("TLS client CA bundle {}: {e}", ca_path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| anyhow::anyhow!("TLS client CA bundle {}: {e}", ca_path.display()))?;
            }
            if roots.is_empty() {
                anyhow::bail!("TLS client CA bundle {}: no CERTIFICATE block", ca_path.display());
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| anyhow::anyhow!("TLS client CA bundle {}: {e}", ca_path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key_der).with_context(|| {
        format!(
            "TLS certificate {} does not go with key {}",
            files.cert.display(),
            files.key.display()
        )
    })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Reads and checks the files as a listener would (for the configuration check before any
/// port is bound); the error names the file.
pub fn check(files: &TlsFiles) -> anyhow::Result<()> {
    let pem = contents(files)?;
    build(files, &pem, ALPN_HTTP).map(|_| ())
}

/// A server configuration that follows its files.
pub struct ReloadingTls {
    files: TlsFiles,
    alpn: &'static [&'static [u8]],
    current: ArcSwap<ServerConfig>,
    seen: std::sync::Mutex<Vec<Vec<u8>>>,
}

impl ReloadingTls {
    /// Reads and checks the files now (an error names the file).
    pub fn load(files: TlsFiles, alpn: &'static [&'static [u8]]) -> anyhow::Result<Arc<ReloadingTls>> {
        let pem = contents(&files)?;
        let config = build(&files, &pem, alpn)?;
        Ok(Arc::new(ReloadingTls {
            files,
            alpn,
            current: ArcSwap::from_pointee(config),
            seen: std::sync::Mutex::new(pem),
        }))
    }

    /// An acceptor with the configuration in force now.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }

    /// Whether client certificates are required.
    pub fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// Reads the files again; swaps in a new configuration when they changed and still make
    /// one. A broken or half-written file keeps the configuration in force (and is logged).
    pub fn reload(&self) -> bool {
        let pem = match contents(&self.files) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "TLS files unreadable; keeping the loaded certificate");
                return false;
            }
        };
        let Ok(mut seen) = self.seen.lock() else {
            return false;
        };
        if *seen == pem {
            return false;
        }
        match build(&self.files, &pem, self.alpn) {
            Ok(config) => {
                self.current.store(Arc::new(config));
                *seen = pem;
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "new TLS files rejected; keeping the loaded certificate");
                *seen = pem;
                false
            }
        }
    }

    /// Looks at the files every [`RELOAD_EVERY`] until the returned task is aborted.
    pub fn watch(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELOAD_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let me = me.clone();
                // File reads and certificate parsing are blocking work.
                let _ = tokio::task::spawn_blocking(move || me.reload()).await;
            }
        })
    }
}
