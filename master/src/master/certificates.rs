//! The certificate steps of the master: self-signed certificates for a deploy's private
//! hosts, and the certificate views of status (docs/tls.md).

use std::collections::BTreeMap;

use tako_ipc::CertEntry;

use super::Master;
use crate::certs::CertView;

impl Master {
    /// Self-signed certificates for private route hosts without one (deploy step 7).
    /// Returns whether the certificate set changed (and was pushed to the workers).
    pub fn ensure_certificates(&self, routes: &[String]) -> bool {
        let mut certs: BTreeMap<String, CertEntry> = self
            .certs_snapshot()
            .into_iter()
            .map(|c| (c.name.clone(), c))
            .collect();
        let changed = crate::certs::add_missing(&mut certs, routes, &self.data.certs());
        if changed {
            self.push_certs(certs.into_values().collect());
        }
        changed
    }

    /// One entry per route host, in route order (docs/tls.md, "Status").
    pub fn cert_views(&self, routes: &[String]) -> Vec<CertView> {
        self.certs.with(|certs| {
            crate::certs::views(
                certs,
                routes,
                &self.data.certs(),
                !self.settings.no_acme,
                &self.acme,
            )
        })
    }
}
