use std::path::Path;

use super::files::valid_cert_name;
use super::*;
use crate::clock::unix_now;

#[test]
fn private_hosts() {
    for h in [
        "localhost",
        "a.localhost",
        "intranet",
        "10.0.0.1",
        "x.local",
        "x.test",
        "x.invalid",
        "x.example",
        "x.home.arpa",
    ] {
        assert!(is_private_host(h), "{h}");
    }
    for h in ["example.com", "app.example.com", "example.org"] {
        assert!(!is_private_host(h), "{h}");
    }
}

#[test]
fn self_signed_is_pem() {
    let c = self_signed("app.test").unwrap();
    assert!(c.cert_chain_pem.contains("BEGIN CERTIFICATE"));
    assert!(c.key_pem.contains("PRIVATE KEY"));
}

fn write(dir: &Path, name: &str, chain: &str, key: &str) {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("fullchain.pem"), chain).unwrap();
    std::fs::write(d.join("privkey.pem"), key).unwrap();
}

#[test]
fn load_dir_checks_chain_key_match_and_name() {
    let dir = std::env::temp_dir().join(format!("tako-certs-unit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let good = self_signed("good.test").unwrap();
    let other = self_signed("other.test").unwrap();
    write(&dir, "good.test", &good.cert_chain_pem, &good.key_pem);
    write(&dir, "mismatch.test", &good.cert_chain_pem, &other.key_pem);
    write(
        &dir,
        "badchain.test",
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        &good.key_pem,
    );
    write(&dir, "nochain.test", "nothing here", &good.key_pem);
    write(&dir, "badkey.test", &good.cert_chain_pem, "garbage");
    write(&dir, "Bad_Name", &good.cert_chain_pem, &good.key_pem);
    std::fs::create_dir_all(dir.join("incomplete.test")).unwrap();
    let (certs, errors) = load_dir(&dir);
    let names: Vec<&str> = certs.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, vec!["good.test"]);
    let errors: std::collections::BTreeMap<String, String> = errors.into_iter().collect();
    assert_eq!(
        errors["mismatch.test"],
        "private key does not match certificate"
    );
    assert!(
        errors["badchain.test"].starts_with("certificate chain does not parse"),
        "{errors:?}"
    );
    assert!(
        errors["nochain.test"].starts_with("certificate chain does not parse"),
        "{errors:?}"
    );
    assert!(
        errors["badkey.test"].starts_with("private key does not parse"),
        "{errors:?}"
    );
    assert_eq!(
        errors["Bad_Name"],
        "not a valid host, wildcard or 'default'"
    );
    assert_eq!(errors.len(), 5, "{errors:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn leaf_not_after_and_self_signed() {
    let c = self_signed("app.test").unwrap();
    let info = leaf_info(&c.cert_chain_pem).unwrap();
    assert!(info.self_signed);
    let in_3650_days = unix_now() + 3650 * 86_400;
    assert!(
        info.not_after_unix_secs.abs_diff(in_3650_days) < 120,
        "{info:?}"
    );

    // A leaf signed by a CA: issuer differs from subject; an explicit date is read back.
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["web.example.com".to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "web.example.com");
    params.not_after = rcgen::date_time_ymd(2031, 2, 3);
    let leaf = params.clone().signed_by(&key, &ca, &ca_key).unwrap();
    let chain = format!("{}{}", leaf.pem(), ca.pem());
    let entry = CertEntry {
        name: "web.example.com".into(),
        cert_chain_pem: chain,
        key_pem: key.serialize_pem(),
    };
    let info = check_entry(&entry).unwrap();
    assert!(!info.self_signed);
    assert_eq!(
        info.not_after_unix_secs, 1_927_843_200,
        "2031-02-03T00:00:00Z"
    );
    // GeneralizedTime after 2049.
    params.not_after = rcgen::date_time_ymd(2051, 1, 1);
    let late = params.self_signed(&key).unwrap();
    assert_eq!(
        leaf_info(&late.pem()).unwrap().not_after_unix_secs,
        2_556_144_000
    );
}

#[test]
fn write_cert_is_atomic_and_keys_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("tako-certs-write-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let c = self_signed("w.test").unwrap();
    write_cert(&dir, &c).unwrap();
    write_cert(&dir, &c).unwrap();
    let mode = |f: &str| {
        std::fs::metadata(dir.join("w.test").join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("privkey.pem"), 0o600);
    assert_eq!(mode("fullchain.pem"), 0o644);
    let left: Vec<_> = std::fs::read_dir(dir.join("w.test"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left.len(), 2, "no temporary files left: {left:?}");
    let (certs, errors) = load_dir(&dir);
    assert_eq!((certs.len(), errors.len()), (1, 0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn names() {
    assert!(valid_cert_name("default"));
    assert!(valid_cert_name("*.example.com"));
    assert!(!valid_cert_name("Bad_Name"));
    assert!(!valid_cert_name("a..b"));
}
