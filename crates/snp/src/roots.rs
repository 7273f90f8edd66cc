//! AMD's root keys: the genuine ARK/ASK/ASVK of each product, embedded and pinned by the
//! SHA-256 of the ARK, or test roots a caller injects explicitly.

use crate::certs::verify_rsa_pss;
use crate::error::{ErrorKind, SnpError};
use crate::report::Product;
use sha2::{Digest, Sha256};

/// SHA-256 of the genuine AMD ARK certificates (DER).
const PINNED_ARKS: &[(Product, &str)] = &[
    (
        Product::Milan,
        "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    ),
    (
        Product::Genoa,
        "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
    ),
    (
        Product::Turin,
        "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
    ),
];

const GENUINE: &[(Product, &str, &str, &str)] = &[
    (
        Product::Milan,
        include_str!("../roots/milan/ark.pem"),
        include_str!("../roots/milan/ask.pem"),
        include_str!("../roots/milan/asvk.pem"),
    ),
    (
        Product::Genoa,
        include_str!("../roots/genoa/ark.pem"),
        include_str!("../roots/genoa/ask.pem"),
        include_str!("../roots/genoa/asvk.pem"),
    ),
    (
        Product::Turin,
        include_str!("../roots/turin/ark.pem"),
        include_str!("../roots/turin/ask.pem"),
        include_str!("../roots/turin/asvk.pem"),
    ),
];

/// One product's chain heads, already checked: ASK and ASVK are signed by the ARK.
#[derive(Debug, Clone)]
pub struct ProductRoots {
    pub product: Product,
    pub ark: Vec<u8>,
    pub ask: Vec<u8>,
    pub asvk: Option<Vec<u8>>,
}

#[derive(Debug, Clone)]
pub struct AmdRoots {
    products: Vec<ProductRoots>,
}

fn der(pem_text: &str) -> Result<Vec<u8>, SnpError> {
    pem::parse(pem_text)
        .map(pem::Pem::into_contents)
        .map_err(|e| SnpError::new(ErrorKind::UntrustedChain, format!("root PEM: {e}")))
}

impl ProductRoots {
    /// Checks the ARK's self-signature and the ASK/ASVK signatures under it.
    pub fn new(
        product: Product,
        ark: Vec<u8>,
        ask: Vec<u8>,
        asvk: Option<Vec<u8>>,
    ) -> Result<Self, SnpError> {
        verify_rsa_pss(&ark, &ark)?;
        verify_rsa_pss(&ask, &ark)?;
        if let Some(a) = &asvk {
            verify_rsa_pss(a, &ark)?;
        }
        Ok(Self {
            product,
            ark,
            ask,
            asvk,
        })
    }
}

impl AmdRoots {
    /// AMD's genuine roots, checked against the pinned ARK fingerprints.
    pub fn genuine() -> Result<Self, SnpError> {
        let mut products = Vec::new();
        for (product, ark, ask, asvk) in GENUINE {
            let ark = der(ark)?;
            let fp = hex::encode(Sha256::digest(&ark));
            if !PINNED_ARKS
                .iter()
                .any(|(p, pin)| p == product && *pin == fp)
            {
                return Err(SnpError::new(
                    ErrorKind::UntrustedChain,
                    format!("embedded ARK-{product} does not match its pin"),
                ));
            }
            products.push(ProductRoots::new(
                *product,
                ark,
                der(ask)?,
                Some(der(asvk)?),
            )?);
        }
        Ok(Self { products })
    }

    /// Explicitly configured roots (test chains); nothing genuine is included.
    pub fn custom(products: Vec<ProductRoots>) -> Self {
        Self { products }
    }

    pub fn for_product(&self, product: Product) -> Option<&ProductRoots> {
        self.products.iter().find(|p| p.product == product)
    }

    pub fn products(&self) -> impl Iterator<Item = &ProductRoots> {
        self.products.iter()
    }
}
