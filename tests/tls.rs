//! HTTPS to backends through rustls: the built-in roots, and a private CA
//! added with `ca_file`.

mod support;

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use support::{Client, Gateway, Mock, TempDir, chat};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A private CA, and a server certificate for `localhost` it signed.
fn pki() -> (String, Arc<rustls::ServerConfig>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let chain = vec![CertificateDer::from(cert.der().to_vec())];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    (ca_cert.pem(), Arc::new(config))
}

#[tokio::test]
async fn https_backends_are_verified_against_the_roots_and_a_ca_file() {
    let (ca_pem, tls) = pki();
    let mock = Mock::start_tls(support::mock::openai, tls).await;
    let port = mock.addr.port();
    let dir = TempDir::new();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let gw = Gateway::start(&format!(
        "auth: {{required: false}}\nrouting: {{retry: {{attempts: 1}}}}\n\
         providers:\n\
         \x20 private: {{type: openai, base_url: \"https://localhost:{port}/v1\", ca_file: \"{}\", api_key: secret}}\n\
         \x20 public: {{type: openai, base_url: \"https://localhost:{port}/v1\"}}\n\
         models:\n  trusted: {{targets: [{{provider: private}}]}}\n  untrusted: {{targets: [{{provider: public}}]}}\n",
        ca_file.display()
    ));
    let client = Client::new();
    let reply = client
        .post(&gw.url("/v1/chat/completions"), &[], chat("trusted", true))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(reply.text().contains("Hello"));
    assert_eq!(
        mock.last().header("authorization"),
        Some("Bearer secret"),
        "the credential went over TLS"
    );

    let refused = client
        .post(
            &gw.url("/v1/chat/completions"),
            &[],
            chat("untrusted", false),
        )
        .await;
    assert_eq!(
        refused.status, 502,
        "a certificate from an unknown CA is refused"
    );
    assert!(
        refused.text().to_lowercase().contains("certificate"),
        "{}",
        refused.text()
    );
}

#[test]
fn a_missing_or_empty_ca_file_is_a_config_error() {
    let dir = TempDir::new();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate").unwrap();
    let config = dir.path().join("c.yaml");
    std::fs::write(
        &config,
        format!(
            "providers:\n  a: {{type: openai, base_url: \"https://x/v1\", ca_file: /nonexistent/ca.pem}}\n  b: {{type: openai, base_url: \"https://x/v1\", ca_file: \"{}\"}}\n",
            empty.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["check", "--config", &config.to_string_lossy()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text.contains("providers.a.ca_file: cannot read /nonexistent/ca.pem"),
        "{text}"
    );
    assert!(text.contains("providers.b.ca_file:"), "{text}");
}
