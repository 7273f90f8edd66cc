//! Lets grpcio-based clients (py-spiffe, grpc-java, grpc C++) use the Workload API.
//!
//! Those clients send the Unix socket path as the HTTP/2 `:authority`, percent-encoded
//! (e.g. `tmp%2Fagent.sock`). The `http` crate rejects a `%` in a host, so `h2` answers such
//! requests with a stream reset and the client sees INTERNAL. Neither crate can be told to
//! accept it, so this wrapper sits between the socket and the HTTP/2 server: it decodes
//! every header block the client sends (HPACK, keeping the client's dynamic table), replaces
//! an authority that does not parse with `localhost`, and re-encodes the block as literals
//! without indexing, so the server's decoder never depends on entries it did not see.
//! All other frames, and everything the server sends, pass through unchanged.

use bytes::{Buf, BytesMut};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE_LEN: usize = 24;
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Frames we emit never exceed the HTTP/2 default maximum frame size.
const OUT_FRAME_MAX: usize = 16_384;
/// Refuse frames larger than this: the protocol's default SETTINGS_MAX_FRAME_SIZE, which the
/// Workload API server never raises, so a conforming client never sends more; a larger length
/// would only make us buffer up to 16 MiB per connection on a world-writable socket.
const IN_FRAME_MAX: usize = 16_384;
/// Bound on the client's HPACK dynamic table we mirror: the protocol's default
/// SETTINGS_HEADER_TABLE_SIZE, which the Workload API server never raises, so a conforming
/// client never asks for more.
const MAX_TABLE: usize = 4096;
/// Bound on one decoded header list (names, values and 32 octets each, as RFC 7540 counts
/// SETTINGS_MAX_HEADER_LIST_SIZE): indexed fields are one octet each on the wire but as long
/// as the table entry they name when decoded, so the wire bound alone does not bound this.
const MAX_HEADER_LIST: usize = 64 * 1024;
/// A drained buffer up to this size is kept for the next frames; a larger one (a burst) is
/// freed, so an idle connection holds little.
const KEEP_IDLE: usize = 4096;
/// Bound on one header block (HEADERS plus CONTINUATIONs): a Workload API request carries a
/// handful of short headers.
const MAX_BLOCK: usize = 64 * 1024;

pub struct AuthorityFix<S> {
    inner: S,
    raw: BytesMut,
    out: BytesMut,
    preface_left: usize,
    decoder: loona_hpack::Decoder<'static>,
    /// A header block waiting for CONTINUATION frames: stream, flags of the HEADERS frame, block.
    pending: Option<(u32, u8, Vec<u8>)>,
    eof: bool,
}

/// Runs the frame rewriter over `data` as if a client had sent it (fuzzing entry point).
#[doc(hidden)]
pub fn fuzz_rewrite(data: &[u8]) {
    let mut f = AuthorityFix::new(());
    for chunk in data.chunks(4096) {
        f.raw.extend_from_slice(chunk);
        if f.process().is_err() {
            return;
        }
        f.out.clear();
    }
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(MAX_TABLE);
        Self {
            inner,
            // allocated as frames arrive and, past KEEP_IDLE, freed once passed on: an idle
            // connection (a workload holding its stream open) keeps little
            raw: BytesMut::new(),
            out: BytesMut::new(),
            preface_left: PREFACE_LEN,
            decoder,
            pending: None,
            eof: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// HPACK integer with an `n`-bit prefix (RFC 7541 §5.1).
fn put_int(out: &mut Vec<u8>, first: u8, n: u8, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// Literal header field without indexing, new name, no Huffman (RFC 7541 §6.2.2).
fn put_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    put_int(out, 0x00, 7, name.len());
    out.extend_from_slice(name);
    put_int(out, 0x00, 7, value.len());
    out.extend_from_slice(value);
}

/// An HPACK integer with an `n`-bit prefix at `b[i]` (RFC 7541 §5.1): its value and where
/// it ends.
fn get_int(b: &[u8], i: usize, n: u8) -> io::Result<(usize, usize)> {
    let max = (1usize << n) - 1;
    let first = *b.get(i).ok_or_else(|| bad("HPACK: truncated integer"))? as usize & max;
    if first < max {
        return Ok((first, i + 1));
    }
    let (mut v, mut shift, mut j) = (max, 0u32, i + 1);
    loop {
        let c = *b.get(j).ok_or_else(|| bad("HPACK: truncated integer"))?;
        j += 1;
        if shift > 21 {
            return Err(bad("HPACK: integer too large"));
        }
        v += ((c & 0x7f) as usize) << shift;
        shift += 7;
        if c & 0x80 == 0 {
            return Ok((v, j));
        }
    }
}

/// The header block `b` with every Huffman-coded string literal replaced by its octets.
///
/// Written here because loona-hpack, which keeps the mirror of the client's dynamic table,
/// builds its Huffman decoding tables again (257 hash-map inserts) for every Huffman string it
/// meets: a quarter of a millisecond of CPU for a typical gRPC request, paid on every Workload
/// API call. This pass only walks the field representations (RFC 7541 §6) to find the
/// strings; httlib-huffman decodes them from static tables. The result means the same to any
/// decoder: the dynamic table counts decoded lengths either way.
fn raw_strings(b: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(b.len() + b.len() / 2);
    let string = |out: &mut Vec<u8>, i: usize| -> io::Result<usize> {
        let (len, start) = get_int(b, i, 7)?;
        let end = start
            .checked_add(len)
            .filter(|e| *e <= b.len())
            .ok_or_else(|| bad("HPACK: truncated string"))?;
        if b[i] & 0x80 == 0 {
            out.extend_from_slice(&b[i..end]);
        } else {
            let mut dec = Vec::with_capacity(len * 8 / 5 + 1);
            httlib_huffman::decode(
                &b[start..end],
                &mut dec,
                httlib_huffman::DecoderSpeed::FourBits,
            )
            .map_err(|e| bad(format!("HPACK: Huffman: {e:?}")))?;
            // httlib-huffman accepts any padding; RFC 7541 §5.2 allows only the EOS code's
            // leading ones, under 8 bits: the one encoding that re-encoding reproduces
            let mut again = Vec::with_capacity(len);
            httlib_huffman::encode(&dec, &mut again)
                .map_err(|e| bad(format!("HPACK: Huffman: {e:?}")))?;
            if again != b[start..end] {
                return Err(bad("HPACK: Huffman string badly padded"));
            }
            put_int(out, 0x00, 7, dec.len());
            out.extend_from_slice(&dec);
        }
        Ok(end)
    };
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let (prefix, literal) = match c {
            _ if c & 0x80 != 0 => (7, false),    // indexed field
            _ if c & 0xc0 == 0x40 => (6, true),  // literal with incremental indexing
            _ if c & 0xe0 == 0x20 => (5, false), // dynamic table size update
            _ => (4, true),                      // literal without indexing / never indexed
        };
        let (index, end) = get_int(b, i, prefix)?;
        out.extend_from_slice(&b[i..end]);
        i = end;
        if literal {
            if index == 0 {
                i = string(&mut out, i)?;
            }
            i = string(&mut out, i)?;
        }
    }
    Ok(out)
}

fn authority_ok(v: &[u8]) -> bool {
    http::uri::Authority::try_from(v).is_ok()
}

impl<S> AuthorityFix<S> {
    fn emit_headers(&mut self, stream: u32, flags: u8, block: &[u8]) -> io::Result<()> {
        let raw = raw_strings(block)?;
        let mut enc = Vec::with_capacity(raw.len() + 64);
        let mut size = 0usize;
        self.decoder
            .decode_with_cb(&raw, |name, value| {
                size = size.saturating_add(name.len() + value.len() + 32);
                if size > MAX_HEADER_LIST {
                    return; // refused below; nothing more is copied
                }
                if &*name == b":authority" && !authority_ok(&value) {
                    tracing::debug!(authority = %String::from_utf8_lossy(&value), "replacing an :authority h2 would reject");
                    put_literal(&mut enc, &name, b"localhost");
                } else {
                    put_literal(&mut enc, &name, &value);
                }
            })
            .map_err(|e| bad(format!("HPACK: {e:?}")))?;
        if size > MAX_HEADER_LIST {
            return Err(bad("header list too large"));
        }
        let chunks: Vec<&[u8]> = if enc.is_empty() {
            vec![&[][..]]
        } else {
            enc.chunks(OUT_FRAME_MAX).collect()
        };
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.iter().enumerate() {
            let (kind, mut f) = if i == 0 {
                (HEADERS, flags & END_STREAM)
            } else {
                (CONTINUATION, 0)
            };
            if i == last {
                f |= END_HEADERS;
            }
            let len = chunk.len() as u32;
            self.out.extend_from_slice(&len.to_be_bytes()[1..]);
            self.out.extend_from_slice(&[kind, f]);
            self.out.extend_from_slice(&stream.to_be_bytes());
            self.out.extend_from_slice(chunk);
        }
        Ok(())
    }

    /// Moves every complete unit of `raw` to `out`, rewriting header blocks.
    fn process(&mut self) -> io::Result<()> {
        if self.preface_left > 0 {
            let n = self.preface_left.min(self.raw.len());
            self.out.extend_from_slice(&self.raw[..n]);
            self.raw.advance(n);
            self.preface_left -= n;
            if self.preface_left > 0 {
                return Ok(());
            }
        }
        while self.raw.len() >= FRAME_HEADER {
            let len = u32::from_be_bytes([0, self.raw[0], self.raw[1], self.raw[2]]) as usize;
            if len > IN_FRAME_MAX {
                return Err(bad("HTTP/2 frame too large"));
            }
            if self.raw.len() < FRAME_HEADER + len {
                break;
            }
            let frame = self.raw.split_to(FRAME_HEADER + len);
            let (kind, flags) = (frame[3], frame[4]);
            let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
            let payload = &frame[FRAME_HEADER..];
            if let Some((pstream, pflags, mut block)) = self.pending.take() {
                if kind != CONTINUATION || stream != pstream {
                    return Err(bad("header block interrupted before END_HEADERS"));
                }
                block.extend_from_slice(payload);
                if block.len() > MAX_BLOCK {
                    return Err(bad("header block too large"));
                }
                if flags & END_HEADERS != 0 {
                    self.emit_headers(stream, pflags, &block)?;
                } else {
                    self.pending = Some((pstream, pflags, block));
                }
            } else if kind == HEADERS {
                let mut start = 0;
                let mut end = payload.len();
                if flags & PADDED != 0 {
                    let pad = *payload
                        .first()
                        .ok_or_else(|| bad("padded HEADERS without pad length"))?
                        as usize;
                    start = 1;
                    end = end
                        .checked_sub(pad)
                        .filter(|e| *e >= start)
                        .ok_or_else(|| bad("HEADERS padding too long"))?;
                }
                if flags & PRIORITY != 0 {
                    start += 5;
                }
                if start > end {
                    return Err(bad("HEADERS frame too short"));
                }
                let block = payload[start..end].to_vec();
                if flags & END_HEADERS != 0 {
                    self.emit_headers(stream, flags, &block)?;
                } else {
                    self.pending = Some((stream, flags, block));
                }
            } else {
                self.out.extend_from_slice(&frame);
            }
        }
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out[..n]);
                this.out.advance(n);
                if this.out.is_empty() && this.out.capacity() > KEEP_IDLE {
                    this.out = BytesMut::new();
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut tmp = [0u8; 16 * 1024];
            let mut rb = ReadBuf::new(&mut tmp);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                this.eof = true;
                // Whatever is left is an incomplete frame; let the server see and reject it.
                let rest = this.raw.split();
                this.out.extend_from_slice(&rest);
                continue;
            }
            this.raw.extend_from_slice(rb.filled());
            this.process()?;
            if this.raw.is_empty() && this.raw.capacity() > KEEP_IDLE {
                this.raw = BytesMut::new();
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The client connection preface every HTTP/2 connection starts with.
    const PREFACE: &[u8; PREFACE_LEN] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// A literal with incremental indexing, as grpcio's encoder sends a new :authority.
    fn indexed_literal(name: &[u8], value: &[u8]) -> Vec<u8> {
        let mut v = vec![0x40];
        put_int(&mut v, 0, 7, name.len());
        v.extend_from_slice(name);
        put_int(&mut v, 0, 7, value.len());
        v.extend_from_slice(value);
        v
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 7541 C.4: three requests with Huffman-coded literals, indexed into and evicted
    /// from the dynamic table. With the strings made raw first, a decoder sees the same
    /// headers and keeps the same table.
    #[test]
    fn huffman_strings_made_raw_decode_to_the_same_headers() {
        let blocks = [
            "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
            "8286 84be 5886 a8eb 1064 9cbf",
            "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
        ];
        let mut direct = loona_hpack::Decoder::new();
        let mut via_raw = loona_hpack::Decoder::new();
        for b in blocks {
            let b = hex(b);
            let raw = raw_strings(&b).unwrap();
            assert!(raw.len() > b.len(), "strings were expanded");
            assert_eq!(direct.decode(&b).unwrap(), via_raw.decode(&raw).unwrap());
        }
        let last = direct.decode(&hex("be")).unwrap();
        assert_eq!(last[0].0, b"custom-key");
        // a block without Huffman strings is unchanged
        let plain = hex("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d");
        assert_eq!(raw_strings(&plain).unwrap(), plain);
        // truncated strings and integers, an EOS inside a Huffman string and padding other than
        // the EOS code's ones are errors, not panics
        for bad in [
            "41 8c f1e3",
            "41 ff",
            "1f ff ff ff ff ff ff 01",
            "41 84 ffff ffff",
            "41 81 00",
        ] {
            assert!(raw_strings(&hex(bad)).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn frames_over_the_default_maximum_and_huge_header_blocks_are_refused() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x0, 0, 1, &vec![0u8; 16_385]));
        let e = through(input).await.unwrap_err();
        assert!(e.to_string().contains("frame too large"), "{e}");
        // a DATA frame of exactly 16 KiB passes through untouched
        let mut input = PREFACE.to_vec();
        let data = frame(0x0, 0, 1, &vec![7u8; 16_384]);
        input.extend(&data);
        assert!(through(input).await.unwrap().ends_with(&data));
        // a header block grown past 64 KiB through CONTINUATION frames
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, 0, 1, &vec![0x80u8; 16_000]));
        for _ in 0..5 {
            input.extend(frame(CONTINUATION, 0, 1, &vec![0x80u8; 16_000]));
        }
        let e = through(input).await.unwrap_err();
        assert!(e.to_string().contains("header block too large"), "{e}");
    }

    /// One octet on the wire naming a 4 KB table entry decodes to 4 KB: a block of such
    /// references is refused once the decoded list passes its bound, before it is copied.
    #[tokio::test]
    async fn indexed_fields_cannot_blow_up_the_decoded_list() {
        let mut block = vec![0x40, 0x01, b'x'];
        put_int(&mut block, 0x00, 7, 4000);
        block.extend(vec![b'v'; 4000]);
        let mut input = PREFACE.to_vec();
        // within the bound: the entry and 14 references (about 60 KB decoded)
        let mut ok = block.clone();
        ok.extend([0xbe; 14]);
        input.extend(frame(HEADERS, END_HEADERS, 1, &ok));
        assert!(through(input).await.is_ok());
        let mut input = PREFACE.to_vec();
        block.extend([0xbe; 4000]);
        input.extend(frame(HEADERS, END_HEADERS, 1, &block));
        let e = through(input).await.unwrap_err();
        assert!(e.to_string().contains("header list too large"), "{e}");
        // and a table larger than the protocol's default is refused
        let mut input = PREFACE.to_vec();
        let mut grow = Vec::new();
        put_int(&mut grow, 0x20, 5, 65_536);
        input.extend(frame(HEADERS, END_HEADERS, 1, &grow));
        assert!(through(input).await.is_err());
    }

    async fn through(input: Vec<u8>) -> io::Result<Vec<u8>> {
        let (mut a, b) = tokio::io::duplex(1 << 20);
        a.write_all(&input).await?;
        drop(a);
        let mut fixed = AuthorityFix::new(b);
        let mut out = Vec::new();
        fixed.read_to_end(&mut out).await?;
        Ok(out)
    }

    fn headers_of(out: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut d = loona_hpack::Decoder::new();
        let mut rest = &out[PREFACE_LEN..];
        let mut blocks = Vec::new();
        let mut block = Vec::new();
        while rest.len() >= FRAME_HEADER {
            let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            let (kind, flags) = (rest[3], rest[4]);
            let payload = &rest[FRAME_HEADER..FRAME_HEADER + len];
            if kind == HEADERS || kind == CONTINUATION {
                block.extend_from_slice(payload);
                if flags & END_HEADERS != 0 {
                    blocks.push(d.decode(&block).unwrap());
                    block.clear();
                }
            }
            rest = &rest[FRAME_HEADER + len..];
        }
        blocks
    }

    #[tokio::test]
    async fn rewrites_percent_authority_and_keeps_dynamic_table_consistent() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        let mut block = vec![0x83, 0x86]; // :method POST, :scheme http (static table)
        block.extend(indexed_literal(b":authority", b"tmp%2Fagent.sock"));
        block.extend(indexed_literal(
            b":path",
            b"/SpiffeWorkloadAPI/FetchX509SVID",
        ));
        block.extend(indexed_literal(b"workload.spiffe.io", b"true"));
        // split across HEADERS (padded, with priority) and a CONTINUATION
        let (a, b) = block.split_at(5);
        let mut p = vec![2u8];
        p.extend_from_slice(&[0, 0, 0, 0, 16]);
        p.extend_from_slice(a);
        p.extend_from_slice(&[0, 0]);
        input.extend(frame(HEADERS, PADDED | PRIORITY, 1, &p));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, b));
        input.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\0"));
        // the second request refers to the dynamic table entries of the first (62..64)
        input.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            3,
            &[0x83, 0x86, 0xbe, 0xbf, 0xc0],
        ));
        let out = through(input).await.unwrap();
        assert_eq!(&out[..PREFACE_LEN], PREFACE);
        let blocks = headers_of(&out);
        assert_eq!(blocks.len(), 2);
        for hs in &blocks {
            let get = |n: &[u8]| hs.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
            assert_eq!(
                get(b":authority").as_deref(),
                Some(&b"localhost"[..]),
                "{hs:?}"
            );
            assert_eq!(
                get(b":path").as_deref(),
                Some(&b"/SpiffeWorkloadAPI/FetchX509SVID"[..])
            );
            assert_eq!(get(b"workload.spiffe.io").as_deref(), Some(&b"true"[..]));
            assert_eq!(get(b":method").as_deref(), Some(&b"POST"[..]));
        }
        // the DATA frame passed through untouched
        assert!(out.windows(5).any(|w| w == b"\0\0\0\0\0"));
    }

    #[tokio::test]
    async fn valid_authority_is_kept_and_garbage_is_refused() {
        let mut input = PREFACE.to_vec();
        let mut block = vec![0x83];
        block.extend(indexed_literal(b":authority", b"localhost:1234"));
        input.extend(frame(HEADERS, END_HEADERS, 1, &block));
        let out = through(input).await.unwrap();
        let hs = &headers_of(&out)[0];
        assert!(
            hs.iter()
                .any(|(k, v)| k == b":authority" && v == b"localhost:1234")
        );

        for bad_block in [vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff], vec![0x40, 0x7f]] {
            let mut input = PREFACE.to_vec();
            input.extend(frame(HEADERS, END_HEADERS, 1, &bad_block));
            assert!(through(input).await.is_err());
        }
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, PADDED | END_HEADERS, 1, &[200, 1, 2]));
        assert!(
            through(input).await.is_err(),
            "padding longer than the frame"
        );
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, 0, 1, &[0x83]));
        input.extend(frame(0x0, 0, 1, b"x"));
        assert!(through(input).await.is_err(), "interrupted header block");
        // truncated input is passed on for the server to reject, never a panic
        let out = through(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\x05\x01".to_vec())
            .await
            .unwrap();
        assert_eq!(out.len(), PREFACE_LEN + 4);
    }
}
