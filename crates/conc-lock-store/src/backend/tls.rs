//! URL options of conc's own (`sslrootcert`), the rustls client configuration the
//! PostgreSQL and Redis backends share, and the error a URL that asks for TLS gets from a
//! build without the `tls` feature.

#[cfg(feature = "tls")]
use std::path::Path;
#[cfg(any(feature = "postgres", feature = "redis"))]
use std::path::PathBuf;

#[cfg(feature = "tls")]
use crate::error::ConnectFailure;
use crate::error::LockError;

/// A URL with conc's own query options taken out.
#[cfg(any(feature = "postgres", feature = "redis"))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SplitUrl {
    /// The URL the driver gets.
    pub(crate) url: String,
    /// `sslrootcert=PATH`: a PEM file of CA certificates to trust, besides the public roots.
    pub(crate) root_cert: Option<PathBuf>,
    /// `sslmode` as written, if any.
    pub(crate) ssl_mode: Option<String>,
}

/// Takes `sslrootcert` out of `url`'s query, and maps `sslmode=verify-ca|verify-full` to
/// `require` (rustls always verifies the certificate and the host name).
#[cfg(any(feature = "postgres", feature = "redis"))]
pub(crate) fn split(url: &str) -> SplitUrl {
    let Some((base, query)) = url.split_once('?') else {
        return SplitUrl {
            url: url.to_owned(),
            root_cert: None,
            ssl_mode: None,
        };
    };
    let mut kept = Vec::new();
    let mut root_cert = None;
    let mut ssl_mode = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "sslrootcert" => root_cert = Some(PathBuf::from(value)),
            "sslmode" => {
                ssl_mode = Some(value.to_owned());
                let mapped = match value {
                    "verify-ca" | "verify-full" => "require",
                    other => other,
                };
                kept.push(format!("sslmode={mapped}"));
            }
            _ => kept.push(pair.to_owned()),
        }
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    SplitUrl {
        url,
        root_cert,
        ssl_mode,
    }
}

/// The error for a URL that asks for TLS (`what`: the part of it that does) in a build
/// without the `tls` feature: a configuration error, never transient.
#[cfg(not(feature = "tls"))]
pub(crate) fn not_built(backend: &'static str, what: &str) -> LockError {
    LockError::InvalidUrl {
        reason: format!(
            "the {backend} URL asks for TLS ({what}), and this build of conc-lock-store has none: enable its `tls` feature (conc-lock-store = {{ features = [\"{backend}\", \"tls\"] }}), or reach the server without TLS"
        ),
    }
}

/// The PEM bytes of `path`, or a typed error naming it.
#[cfg(feature = "tls")]
pub(crate) fn read_root_cert(backend: &'static str, path: &Path) -> Result<Vec<u8>, LockError> {
    std::fs::read(path).map_err(|e| LockError::Connect {
        backend,
        cause: ConnectFailure::Tls,
        message: format!("cannot read sslrootcert `{}`: {e}", path.display()),
    })
}

/// A rustls client configuration trusting the public web roots and, if given, the PEM
/// certificates in `root_cert`; its crypto is the process's default provider when the
/// application installed one (`CryptoProvider::install_default`, aws-lc-rs's for
/// post-quantum key exchange, say), else *ring*'s.
#[cfg(all(feature = "postgres", feature = "tls"))]
pub(crate) fn client_config(
    backend: &'static str,
    root_cert: Option<&Path>,
) -> Result<rustls::ClientConfig, LockError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let tls_error = |message: String| LockError::Connect {
        backend,
        cause: ConnectFailure::Tls,
        message,
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = root_cert {
        let pem = read_root_cert(backend, path)?;
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| {
                tls_error(format!("sslrootcert `{}` is not PEM: {e}", path.display()))
            })?;
            roots.add(cert).map_err(|e| {
                tls_error(format!(
                    "sslrootcert `{}` holds a bad certificate: {e}",
                    path.display()
                ))
            })?;
            added += 1;
        }
        if added == 0 {
            return Err(tls_error(format!(
                "sslrootcert `{}` holds no certificate",
                path.display()
            )));
        }
    }
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(ring_provider);
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// *ring*'s provider: rustls 0.23.48 deprecates it for want of post-quantum key exchange,
/// and keeps it; it is what builds everywhere without a C toolchain, so it stays the
/// fallback when the application installed no provider of its own.
#[cfg(all(feature = "postgres", feature = "tls"))]
#[allow(deprecated)]
fn ring_provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

#[cfg(all(test, any(feature = "postgres", feature = "redis")))]
mod tests {
    use super::*;

    #[test]
    fn conc_options_are_taken_out() {
        let parts =
            split("postgres://u@h/db?sslmode=verify-full&sslrootcert=/ca.pem&application_name=x");
        assert_eq!(
            parts.url,
            "postgres://u@h/db?sslmode=require&application_name=x"
        );
        assert_eq!(parts.root_cert, Some(PathBuf::from("/ca.pem")));
        assert_eq!(parts.ssl_mode.as_deref(), Some("verify-full"));
        assert_eq!(split("redis://h:1").url, "redis://h:1");
        assert_eq!(split("rediss://h:1?sslrootcert=/a").url, "rediss://h:1");
    }
}

/// A build without the `tls` feature refuses, before any connection, every URL that asks
/// for TLS, naming the feature; a URL that may go plain connects plain.
#[cfg(all(test, not(feature = "tls")))]
mod without_tls {
    use crate::error::LockError;

    async fn refused(url: &str, what: &str) {
        match crate::connect(url).await {
            Err(LockError::InvalidUrl { reason }) => {
                assert!(
                    reason.contains("`tls` feature") && reason.contains(what),
                    "{url}: {reason}"
                );
            }
            Err(other) => panic!("{url}: not refused as a URL: {other}"),
            Ok(_) => panic!("{url}: connected without TLS"),
        }
    }

    #[cfg(feature = "postgres")]
    #[tokio::test]
    async fn postgres_urls_that_insist_on_tls_are_refused() {
        // Port 1: nothing listens, so only a refusal before connecting passes.
        for mode in ["require", "verify-ca", "verify-full"] {
            let url = format!("postgres://u@127.0.0.1:1/db?sslmode={mode}");
            refused(&url, &format!("sslmode={mode}")).await;
        }
        refused(
            "postgres://u@127.0.0.1:1/db?sslrootcert=/ca.pem",
            "sslrootcert=/ca.pem",
        )
        .await;
        // `prefer` may go plain, as libpq without SSL does: the error is the connection's.
        let config = crate::PostgresConfig::default();
        assert!(
            crate::postgres_pool("postgres://u@127.0.0.1:1/db?sslmode=prefer", &config).is_ok()
        );
    }

    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn redis_urls_that_ask_for_tls_are_refused() {
        refused("rediss://127.0.0.1:1", "rediss://").await;
        refused("rediss+cluster://127.0.0.1:1,127.0.0.1:2", "rediss://").await;
        refused(
            "rediss+sentinel://127.0.0.1:1/primary",
            "rediss+sentinel://",
        )
        .await;
        refused(
            "redis://127.0.0.1:1?sslrootcert=/ca.pem",
            "sslrootcert=/ca.pem",
        )
        .await;
    }

    #[cfg(feature = "etcd")]
    #[tokio::test]
    async fn etcd_urls_that_ask_for_tls_are_refused() {
        refused("etcds://127.0.0.1:1", "etcds://").await;
    }
}
