//! Trust for the HTTPS connection to the ACME directory: the platform's verifier with the
//! certificates of `--acme-ca-root` added as roots, and those same certificates pinned.
//!
//! A private ACME server (Pebble, a lab CA) is often given one self-signed certificate that
//! is both its "CA" and its server certificate. webpki refuses that as an end entity (a CA
//! certificate used as a leaf, or an issuer it cannot find), so a root alone does not help.
//! A certificate named in `--acme-ca-root` is therefore also accepted when the server
//! presents exactly it (byte for byte) as its leaf, for a name it covers.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

#[derive(Debug)]
pub struct PinnedOrPlatform {
    pinned: Vec<CertificateDer<'static>>,
    platform: rustls_platform_verifier::Verifier,
    provider: Arc<CryptoProvider>,
}

impl PinnedOrPlatform {
    /// `extra`: the certificates of `--acme-ca-root`, trusted as roots and pinned as leaves.
    pub fn new(
        extra: Vec<CertificateDer<'static>>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, rustls::Error> {
        let platform = rustls_platform_verifier::Verifier::new_with_extra_roots(
            extra.clone(),
            provider.clone(),
        )?;
        Ok(PinnedOrPlatform {
            pinned: extra,
            platform,
            provider,
        })
    }
}

impl ServerCertVerifier for PinnedOrPlatform {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self
            .pinned
            .iter()
            .any(|p| p.as_ref() == end_entity.as_ref())
        {
            // The bytes are the admin's own choice; the name must still be one it covers, so
            // a pin for one host is not a pass for every host that presents it.
            let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_name(&parsed, server_name)?;
            return Ok(ServerCertVerified::assertion());
        }
        self.platform
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn self_signed(names: &[&str]) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).expect("cert").der().clone()
    }

    #[test]
    fn a_pinned_certificate_is_accepted_for_its_names_only() {
        let pinned = self_signed(&["localhost"]);
        let other = self_signed(&["localhost"]);
        let v = PinnedOrPlatform::new(vec![pinned.clone()], provider()).expect("verifier");
        let name = ServerName::try_from("localhost").expect("name");
        let now = UnixTime::now();
        assert!(v.verify_server_cert(&pinned, &[], &name, &[], now).is_ok());
        // Another self-signed certificate with the same name is not the pinned one.
        assert!(v.verify_server_cert(&other, &[], &name, &[], now).is_err());
        let wrong = ServerName::try_from("example.org").expect("name");
        assert!(v
            .verify_server_cert(&pinned, &[], &wrong, &[], now)
            .is_err());
    }
}
