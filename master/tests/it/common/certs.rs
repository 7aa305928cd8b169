//! Certificates for the HTTPS tests, in the layout of docs/tls.md, "Files". The server refuses
//! a handshake whose SNI matches no certificate (docs/tls.md,
//! "Which certificate a handshake gets"), so tests that speak HTTPS install one before the
//! server starts.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::fixture::chown;

/// Writes a self-signed certificate for each name (`default` gets the SAN `localhost`).
pub fn install(data_dir: &Path, names: &[String], owner: (u32, u32)) {
    let certs = data_dir.join("certs");
    fs::create_dir_all(&certs).expect("create certs/");
    fs::set_permissions(&certs, fs::Permissions::from_mode(0o700)).expect("chmod certs/");
    chown(&certs, owner);
    for name in names {
        let san = if name == "default" {
            "localhost".to_string()
        } else {
            name.clone()
        };
        let ck = rcgen::generate_simple_self_signed(vec![san]).expect("generate a certificate");
        let dir = certs.join(name);
        fs::create_dir_all(&dir).expect("create the certificate directory");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).expect("chmod");
        let key = dir.join("privkey.pem");
        let chain = dir.join("fullchain.pem");
        fs::write(&key, ck.key_pair.serialize_pem()).expect("write privkey.pem");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod key");
        fs::write(&chain, ck.cert.pem()).expect("write fullchain.pem");
        fs::set_permissions(&chain, fs::Permissions::from_mode(0o644)).expect("chmod chain");
        for p in [&dir, &key, &chain] {
            chown(p, owner);
        }
    }
}
