//! Where CA and JWT signing keys live: `disk` (PKCS#8 PEM files, mode 0600, written
//! atomically so a crash never leaves half a key) or `memory` (gone on restart).

use ironpact_spiffe::{KeyType, PrivateKey};
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("key store {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("key {id}: {source}")]
    Invalid {
        id: String,
        #[source]
        source: ironpact_spiffe::Error,
    },
}

pub trait KeyManager: Send + Sync + 'static {
    fn store(&self, id: &str, key: &PrivateKey) -> Result<(), KeyError>;
    fn load(&self, id: &str, key_type: KeyType) -> Result<Option<PrivateKey>, KeyError>;
    fn delete(&self, id: &str) -> Result<(), KeyError>;
    fn name(&self) -> &'static str;
}

/// Keys as files under one directory (created 0700).
#[derive(Debug)]
pub struct DiskKeyManager {
    dir: PathBuf,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl DiskKeyManager {
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, KeyError> {
        let dir = dir.into();
        let io = |source| KeyError::Io {
            path: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        Ok(Self { dir })
    }

    fn path(&self, id: &str) -> Result<PathBuf, KeyError> {
        if !valid_id(id) {
            return Err(KeyError::Io {
                path: id.to_string(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "bad key id"),
            });
        }
        Ok(self.dir.join(format!("{id}.pem")))
    }
}

impl KeyManager for DiskKeyManager {
    fn store(&self, id: &str, key: &PrivateKey) -> Result<(), KeyError> {
        let path = self.path(id)?;
        let tmp = path.with_extension("pem.tmp");
        let io = |source| KeyError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(key.pkcs8_pem().as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io)?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(())
    }

    fn load(&self, id: &str, key_type: KeyType) -> Result<Option<PrivateKey>, KeyError> {
        let path = self.path(id)?;
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(KeyError::Io {
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        let der = pem::parse(text.as_bytes())
            .map_err(|e| KeyError::Invalid {
                id: id.to_string(),
                source: ironpact_spiffe::Error::InvalidKey(e.to_string()),
            })?
            .into_contents();
        PrivateKey::from_pkcs8(key_type, &der)
            .map(Some)
            .map_err(|source| KeyError::Invalid {
                id: id.to_string(),
                source,
            })
    }

    fn delete(&self, id: &str) -> Result<(), KeyError> {
        let path = self.path(id)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(KeyError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    fn name(&self) -> &'static str {
        "disk"
    }
}

/// Keys in process memory only.
#[derive(Debug, Default)]
pub struct MemoryKeyManager {
    keys: Mutex<HashMap<String, Vec<u8>>>,
}

impl KeyManager for MemoryKeyManager {
    fn store(&self, id: &str, key: &PrivateKey) -> Result<(), KeyError> {
        if let Ok(mut m) = self.keys.lock() {
            m.insert(id.to_string(), key.pkcs8_der().to_vec());
        }
        Ok(())
    }

    fn load(&self, id: &str, key_type: KeyType) -> Result<Option<PrivateKey>, KeyError> {
        let der = self.keys.lock().ok().and_then(|m| m.get(id).cloned());
        der.map(|d| PrivateKey::from_pkcs8(key_type, &d))
            .transpose()
            .map_err(|source| KeyError::Invalid {
                id: id.to_string(),
                source,
            })
    }

    fn delete(&self, id: &str) -> Result<(), KeyError> {
        if let Ok(mut m) = self.keys.lock() {
            m.remove(id);
        }
        Ok(())
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn disk_keys_are_private_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        let km = DiskKeyManager::new(dir.path().join("keys")).unwrap();
        let k = PrivateKey::generate(KeyType::EcP256).unwrap();
        km.store("x509-ca-1", &k).unwrap();
        let mode = std::fs::metadata(dir.path().join("keys/x509-ca-1.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let km2 = DiskKeyManager::new(dir.path().join("keys")).unwrap();
        let back = km2.load("x509-ca-1", KeyType::EcP256).unwrap().unwrap();
        assert_eq!(back.spki_der(), k.spki_der());
        assert!(km2.load("missing", KeyType::EcP256).unwrap().is_none());
        assert!(km2.store("../evil", &k).is_err());
        km2.delete("x509-ca-1").unwrap();
        assert!(km2.load("x509-ca-1", KeyType::EcP256).unwrap().is_none());
    }
}
