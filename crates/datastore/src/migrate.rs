//! Schema migrations, applied at start-up inside one transaction. On PostgreSQL and MySQL a
//! lock (advisory lock, `GET_LOCK`) serialises servers of one HA cluster that start at the same
//! time. MySQL/MariaDB get their own DDL for the same schema versions ([`MYSQL_MIGRATIONS`]).

use crate::store::Dialect;

/// Each element is one schema version; statements are separated by `;`.
/// `BLOB` is rewritten to `BYTEA` for PostgreSQL.
pub(crate) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE registered_entries (
    entry_id TEXT PRIMARY KEY,
    spiffe_id TEXT NOT NULL,
    parent_id TEXT NOT NULL,
    x509_svid_ttl BIGINT NOT NULL,
    jwt_svid_ttl BIGINT NOT NULL,
    admin BIGINT NOT NULL,
    downstream BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    store_svid BIGINT NOT NULL,
    hint TEXT NOT NULL,
    dns_names TEXT NOT NULL,
    federates_with TEXT NOT NULL,
    revision_number BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    similarity_key TEXT NOT NULL UNIQUE
);
CREATE INDEX registered_entries_spiffe_id ON registered_entries (spiffe_id);
CREATE INDEX registered_entries_parent_id ON registered_entries (parent_id);
CREATE TABLE entry_selectors (
    entry_id TEXT NOT NULL,
    type TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (entry_id, type, value)
);
CREATE INDEX entry_selectors_tv ON entry_selectors (type, value);
CREATE TABLE attested_agents (
    spiffe_id TEXT PRIMARY KEY,
    attestation_type TEXT NOT NULL,
    serial_number TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    banned BIGINT NOT NULL,
    can_reattest BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE agent_selectors (
    spiffe_id TEXT NOT NULL,
    type TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (spiffe_id, type, value)
);
CREATE TABLE join_tokens (
    token TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
CREATE TABLE bundles (
    trust_domain TEXT PRIMARY KEY,
    data BLOB NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE ca_journal (
    id BIGINT PRIMARY KEY,
    data BLOB NOT NULL,
    updated_at BIGINT NOT NULL
)
"#,
    r#"
ALTER TABLE attested_agents ADD COLUMN attestation_error TEXT NOT NULL DEFAULT ''
"#,
    // The TEE instance (SEV-SNP report ID) the agent first attested from: re-attestation under
    // the same agent ID must come from it. Join tokens are kept as SHA-256 digests from here on
    // (existing plaintext tokens are hashed in place by `DataStore::migrate`).
    r#"
ALTER TABLE attested_agents ADD COLUMN tee_instance TEXT NOT NULL DEFAULT ''
"#,
    // The change log: one row per written entry, agent or bundle, in the transaction that
    // writes it. Servers read it incrementally (`id > last`) to keep their in-memory caches
    // current; ids from concurrent transactions may become visible out of order, which the
    // reader handles. Pruned by age. Indexes for the admin API's filters.
    r#"
CREATE TABLE changes (
    id CHANGE_ID_PK,
    kind TEXT NOT NULL,
    change_key TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX changes_created_at ON changes (created_at);
CREATE INDEX registered_entries_hint ON registered_entries (hint);
CREATE INDEX attested_agents_attestation_type ON attested_agents (attestation_type);
CREATE INDEX agent_selectors_tv ON agent_selectors (type, value)
"#,
    // One CA journal per server (each server of a cluster has its own CA and JWT keys, all
    // published in the shared bundle); `ca_journal` (one row) is read once, by a server that
    // has none yet, and left as it is.
    r#"
CREATE TABLE ca_journals (
    server_id TEXT PRIMARY KEY,
    data BLOB NOT NULL,
    updated_at BIGINT NOT NULL
)
"#,
    // The serial of the agent SVID a renewal replaced, accepted until the agent first presents
    // the new one (a renewal whose answer was lost, to a server that died, costs nothing).
    r#"
ALTER TABLE attested_agents ADD COLUMN previous_serial TEXT NOT NULL DEFAULT ''
"#,
    // Federation relationships made through the admin API (`federation create`); those of the
    // config file are not stored. `endpoint_spiffe_id` is empty for https_web.
    r#"
CREATE TABLE federation_relationships (
    trust_domain TEXT PRIMARY KEY,
    bundle_endpoint_url TEXT NOT NULL,
    profile TEXT NOT NULL,
    endpoint_spiffe_id TEXT NOT NULL,
    updated_at BIGINT NOT NULL
)
"#,
    // SPIRE's -disableX509SVIDPrefetch: agents sign on a workload's first request
    r#"
ALTER TABLE registered_entries ADD COLUMN disable_x509_svid_prefetch BIGINT NOT NULL DEFAULT 0
"#,
    // what the agent's TEE evidence proved (the DER of AttestationClaims, hex), for its SVIDs
    r#"
ALTER TABLE attested_agents ADD COLUMN attestation_claims TEXT NOT NULL DEFAULT ''
"#,
    // entries whose SVIDs go without attestation claims
    r#"
ALTER TABLE registered_entries ADD COLUMN disable_attestation_claims BIGINT NOT NULL DEFAULT 0
"#,
    // the last refusal as structured data (JSON), beside its text in attestation_error
    r#"
ALTER TABLE attested_agents ADD COLUMN attestation_refusal TEXT NOT NULL DEFAULT ''
"#,
];

/// The migration after which `join_tokens.token` holds digests, not tokens.
pub(crate) const HASHED_TOKENS: usize = 3;

/// The same schema versions in MySQL/MariaDB's DDL: indexed text columns need a length
/// (InnoDB keys are at most 3,072 bytes), comparisons must be byte-wise and case-sensitive as
/// on the other engines (`{coll}`: a binary, no-pad collation, chosen at migration time), and
/// SPIFFE IDs are ASCII by the standard (so a 2,048-byte ID fits an index). Selector tables
/// have no primary key over (owner, type, value) (values may be longer than a key can hold):
/// the code inserts each selector once, and lookups go through prefix indexes.
pub(crate) const MYSQL_MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE registered_entries (
    entry_id VARCHAR(255) NOT NULL PRIMARY KEY,
    spiffe_id VARCHAR(2048) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    parent_id VARCHAR(2048) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    x509_svid_ttl BIGINT NOT NULL,
    jwt_svid_ttl BIGINT NOT NULL,
    admin BIGINT NOT NULL,
    downstream BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    store_svid BIGINT NOT NULL,
    hint VARCHAR(1024) NOT NULL,
    dns_names MEDIUMTEXT NOT NULL,
    federates_with MEDIUMTEXT NOT NULL,
    revision_number BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    similarity_key CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL UNIQUE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE={coll};
CREATE INDEX registered_entries_spiffe_id ON registered_entries (spiffe_id);
CREATE INDEX registered_entries_parent_id ON registered_entries (parent_id);
CREATE TABLE entry_selectors (
    entry_id VARCHAR(255) NOT NULL,
    type VARCHAR(255) NOT NULL,
    value TEXT NOT NULL,
    INDEX entry_selectors_entry (entry_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE={coll};
CREATE INDEX entry_selectors_tv ON entry_selectors (type(191), value(500));
CREATE TABLE attested_agents (
    spiffe_id VARCHAR(2048) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    attestation_type VARCHAR(255) NOT NULL,
    serial_number VARCHAR(255) NOT NULL,
    expires_at BIGINT NOT NULL,
    banned BIGINT NOT NULL,
    can_reattest BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE={coll};
CREATE TABLE agent_selectors (
    spiffe_id VARCHAR(2048) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    type VARCHAR(255) NOT NULL,
    value TEXT NOT NULL,
    INDEX agent_selectors_agent (spiffe_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE={coll};
CREATE TABLE join_tokens (
    token CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    expires_at BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE={coll};
CREATE TABLE bundles (
    trust_domain VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    data LONGBLOB NOT NULL,
    updated_at BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE={coll};
CREATE TABLE ca_journal (
    id BIGINT NOT NULL PRIMARY KEY,
    data LONGBLOB NOT NULL,
    updated_at BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE={coll}
"#,
    r#"
ALTER TABLE attested_agents ADD COLUMN attestation_error TEXT NOT NULL DEFAULT ('')
"#,
    r#"
ALTER TABLE attested_agents ADD COLUMN tee_instance VARCHAR(255) NOT NULL DEFAULT ''
"#,
    r#"
CREATE TABLE changes (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    kind VARCHAR(16) NOT NULL,
    change_key TEXT NOT NULL,
    created_at BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE={coll};
CREATE INDEX changes_created_at ON changes (created_at);
CREATE INDEX registered_entries_hint ON registered_entries (hint(255));
CREATE INDEX attested_agents_attestation_type ON attested_agents (attestation_type);
CREATE INDEX agent_selectors_tv ON agent_selectors (type(191), value(500))
"#,
    r#"
CREATE TABLE ca_journals (
    server_id VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    data LONGBLOB NOT NULL,
    updated_at BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE={coll}
"#,
    r#"
ALTER TABLE attested_agents ADD COLUMN previous_serial VARCHAR(255) NOT NULL DEFAULT ''
"#,
    r#"
CREATE TABLE federation_relationships (
    trust_domain VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    bundle_endpoint_url TEXT NOT NULL,
    profile VARCHAR(32) NOT NULL,
    endpoint_spiffe_id VARCHAR(2048) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    updated_at BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE={coll}
"#,
    r#"
ALTER TABLE registered_entries ADD COLUMN disable_x509_svid_prefetch BIGINT NOT NULL DEFAULT 0
"#,
    // MySQL gives TEXT no default: NULL reads as none
    r#"
ALTER TABLE attested_agents ADD COLUMN attestation_claims TEXT CHARACTER SET ascii COLLATE ascii_bin NULL
"#,
    r#"
ALTER TABLE registered_entries ADD COLUMN disable_attestation_claims BIGINT NOT NULL DEFAULT 0
"#,
    // MySQL gives TEXT no default: NULL reads as none
    r#"
ALTER TABLE attested_agents ADD COLUMN attestation_refusal TEXT NULL
"#,
];

/// The migrations of `dialect`, one element per schema version.
pub(crate) fn migrations(dialect: Dialect) -> &'static [&'static str] {
    match dialect {
        Dialect::MySql => MYSQL_MIGRATIONS,
        Dialect::Sqlite | Dialect::Postgres => MIGRATIONS,
    }
}

/// The statements of one migration; `collation` is MySQL's binary no-pad collation.
pub(crate) fn statements(dialect: Dialect, migration: &str, collation: &str) -> Vec<String> {
    migration
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| match dialect {
            Dialect::Sqlite => s.replace("CHANGE_ID_PK", "INTEGER PRIMARY KEY AUTOINCREMENT"),
            Dialect::Postgres => s
                .replace(" BLOB ", " BYTEA ")
                .replace("CHANGE_ID_PK", "BIGSERIAL PRIMARY KEY"),
            Dialect::MySql => s.replace("{coll}", collation),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_engine_has_every_schema_version() {
        assert_eq!(MIGRATIONS.len(), MYSQL_MIGRATIONS.len());
    }
}
