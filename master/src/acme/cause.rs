//! What an ACME failure came down to, said so a person can act on it (docs/tls.md, "ACME", Failures
//! say their cause). instant-acme reports a failed connection as `client error (Connect)`; the
//! cause (an untrusted certificate, a name that does not resolve, a refused connection) is further
//! down the error's source chain, and a rate limit is only a problem type. This walks the chain,
//! names the cause first and keeps every distinct message after it.

use std::error::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    CertificateVerification,
    Tls,
    Dns,
    ConnectionRefused,
    Timeout,
    RateLimited,
}

impl Cause {
    fn advice(self) -> &'static str {
        match self {
            Cause::CertificateVerification => "certificate verification failed: the ACME directory's certificate is not trusted (give its CA, or the certificate itself, with --acme-ca-root)",
            Cause::Tls => "TLS handshake with the ACME directory failed",
            Cause::Dns => "DNS lookup failed: the ACME directory's host does not resolve (check --acme-directory and the host's resolver)",
            Cause::ConnectionRefused => "connection refused: nothing answers at the ACME directory's address (check --acme-directory and that the CA is up)",
            Cause::Timeout => "the connection to the ACME directory timed out (check the network and firewall)",
            Cause::RateLimited => "rate limited by the CA: wait before asking again (the CA's detail follows)",
        }
    }
}

/// An ACME problem document of type `rateLimited` (RFC 8555 §6.7).
fn is_rate_limit(problem: &instant_acme::Problem) -> bool {
    problem
        .r#type
        .as_deref()
        .is_some_and(|t| t.ends_with(":rateLimited"))
}

fn classify_rustls(e: &rustls::Error) -> Cause {
    match e {
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
            Cause::CertificateVerification
        }
        _ => Cause::Tls,
    }
}

/// The cause of one error in the chain, if it shows one.
fn classify(e: &(dyn Error + 'static)) -> Option<Cause> {
    if let Some(r) = e.downcast_ref::<rustls::Error>() {
        return Some(classify_rustls(r));
    }
    // An io::Error's own `source` skips the error it wraps, and hyper-rustls wraps
    // tokio-rustls's io::Error in another one: look inside, a few levels deep.
    let mut io = e.downcast_ref::<std::io::Error>();
    for _ in 0..4 {
        let Some(this) = io else { break };
        match this.kind() {
            std::io::ErrorKind::ConnectionRefused => return Some(Cause::ConnectionRefused),
            std::io::ErrorKind::TimedOut => return Some(Cause::Timeout),
            _ => {}
        }
        let inner = this.get_ref();
        if let Some(r) = inner.and_then(|i| i.downcast_ref::<rustls::Error>()) {
            return Some(classify_rustls(r));
        }
        io = inner.and_then(|i| i.downcast_ref::<std::io::Error>());
    }
    if let Some(instant_acme::Error::Api(p)) = e.downcast_ref::<instant_acme::Error>() {
        if is_rate_limit(p) {
            return Some(Cause::RateLimited);
        }
    }
    if let Some(p) = e.downcast_ref::<instant_acme::Problem>() {
        if is_rate_limit(p) {
            return Some(Cause::RateLimited);
        }
    }
    // hyper-util's connector names a failed resolution only in its message.
    if e.to_string().starts_with("dns error") {
        return Some(Cause::Dns);
    }
    None
}

/// `<cause>: <message>: <message>…`, or the messages alone when no cause is recognised.
pub fn describe(err: &(dyn Error + 'static)) -> String {
    let mut cause = None;
    let mut messages: Vec<String> = Vec::new();
    let mut next = Some(err);
    // Bounded: a source chain is short, but nothing promises it ends.
    for _ in 0..16 {
        let Some(e) = next else { break };
        cause = cause.or_else(|| classify(e));
        let text = e.to_string();
        if !text.is_empty() && !messages.iter().any(|m| m.contains(&text)) {
            messages.push(text);
        }
        next = e.source();
    }
    let detail = messages.join(": ");
    match cause {
        Some(c) => format!("{}: {detail}", c.advice()),
        None => detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("client error (Connect)")]
    struct Outer(#[source] Box<dyn Error + Send + Sync>);

    #[test]
    fn certificate_errors_inside_io_errors_are_found() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        // As hyper-rustls hands it on: wrapped once more.
        let text = describe(&Outer(Box::new(std::io::Error::other(io))));
        assert!(
            text.starts_with("certificate verification failed: "),
            "{text}"
        );
        assert!(text.contains("client error (Connect)"), "{text}");
        assert!(text.contains("UnknownIssuer"), "{text}");
    }

    #[test]
    fn refused_and_rate_limited() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(describe(&Outer(Box::new(io))).starts_with("connection refused: "));
        let problem: instant_acme::Problem = serde_json::from_str(
            r#"{"type":"urn:ietf:params:acme:error:rateLimited","detail":"too many certificates","status":429}"#,
        )
        .expect("problem");
        let text = describe(&instant_acme::Error::Api(problem));
        assert!(text.starts_with("rate limited by the CA"), "{text}");
        assert!(text.contains("too many certificates"), "{text}");
    }

    #[test]
    fn unknown_causes_keep_the_messages() {
        let io = std::io::Error::other("something else");
        assert_eq!(
            describe(&Outer(Box::new(io))),
            "client error (Connect): something else"
        );
    }
}
