//! AMD's Key Distribution Service on an [`Emulator`]: its paths composed here, from AMD's
//! documentation, independently of our client. Bodies are files on the emulator
//! ([`Emulator::file`]); outages are the emulator's ([`Emulator::set_availability`]).

use crate::http::Emulator;

/// `/vcek/v1/{product}/{chip ID hex}?blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..`
pub fn vcek_path(
    product: &str,
    chip_id_hex: &str,
    (bl, tee, snp, ucode): (u8, u8, u8, u8),
) -> String {
    format!(
        "/vcek/v1/{product}/{chip_id_hex}?blSPL={bl}&teeSPL={tee}&snpSPL={snp}&ucodeSPL={ucode}"
    )
}

/// `/vcek/v1/{product}/crl`, or the VLEK's `/vlek/v1/{product}/crl`.
pub fn crl_path(product: &str, vlek: bool) -> String {
    format!("/{}/v1/{product}/crl", if vlek { "vlek" } else { "vcek" })
}

/// A KDS on a new emulator serving `files` (path → DER).
pub fn start(files: Vec<(String, Vec<u8>)>) -> std::io::Result<Emulator> {
    let e = Emulator::start()?;
    for (p, body) in files {
        e.file(&p, body);
    }
    Ok(e)
}
