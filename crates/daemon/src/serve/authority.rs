//! Unix-socket HTTP/2 requests reach the server with an `:authority` it accepts.
//!
//! Standard gRPC clients put the socket path in `:authority` when they dial a unix socket:
//! grpc-core (Python, C++, Ruby…) sends it percent-encoded (`tmp%2Fcorral.sock`), grpc-java,
//! grpc-swift and older grpc-go send it raw (`/run/corral/corral.sock`). Neither is an RFC 3986
//! authority, and `h2` turns any request whose `:authority` does not parse as one into a
//! malformed request: `RST_STREAM(PROTOCOL_ERROR)` before the request reaches a service (h2
//! has no switch for it; hyperium/h2#487 is the open request). On a unix socket the authority
//! names nothing (one server, no virtual hosts), so this layer, between the socket and the
//! server, replaces an `:authority` that does not parse with `localhost`, as grpc-go does for
//! unix targets. Every other header, and every request whose `:authority` is valid, reaches
//! `h2` exactly as sent, and `h2` applies all of its own checks to it.
//!
//! How: only the client-to-server direction of a connection that opens with the HTTP/2
//! preface is read. HEADERS and CONTINUATION frames are gathered into one header block,
//! decoded with the client's HPACK state, and sent on re-encoded as literals that never enter
//! the server's dynamic table (so the two HPACK states can never disagree); every other frame
//! and every HTTP/1.1 connection pass through untouched.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What every HTTP/2 connection opens with (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The smallest SETTINGS_MAX_FRAME_SIZE a peer may announce, so always allowed.
const MAX_FRAME: usize = 16_384;
/// The server's HPACK table size: hyper's h2 server announces none, so the default 4096.
const HPACK_TABLE: usize = 4_096;
/// Larger header blocks (encoded, or decoded as RFC 7541 counts them) close the connection.
/// The server refuses lists over 16 KiB anyway; this only bounds what is buffered here.
const MAX_BLOCK: usize = 64 * 1024;
/// What replaces an `:authority` that is not one.
const LOCAL_AUTHORITY: &[u8] = b"localhost";

/// Why a connection was closed: its HTTP/2 header framing or compression was broken.
#[derive(Debug, thiserror::Error)]
enum FramingError {
    /// A header block was interrupted, or a CONTINUATION came without a HEADERS.
    #[error("HTTP/2 header block out of sequence on stream {stream}")]
    OutOfSequence { stream: u32 },
    /// Padding or priority fields longer than their HEADERS frame.
    #[error("HTTP/2 HEADERS frame on stream {stream} is shorter than its padding or priority")]
    ShortFrame { stream: u32 },
    /// A header block over [`MAX_BLOCK`].
    #[error("HTTP/2 header block on stream {stream} exceeds {MAX_BLOCK} bytes")]
    TooLarge { stream: u32 },
    /// HPACK that does not decode.
    #[error("HTTP/2 header block on stream {stream}: {source}")]
    Hpack {
        stream: u32,
        #[source]
        source: loona_hpack::decoder::DecoderError,
    },
}

/// A connection whose HTTP/2 request headers carry an `:authority` the server accepts.
pub struct FixAuthority<S> {
    io: S,
    rewriter: Rewriter,
    /// Rewritten bytes not yet handed to the server, from `out_at` on.
    out: Vec<u8>,
    out_at: usize,
}

impl<S> FixAuthority<S> {
    /// Wraps a freshly accepted connection.
    pub fn new(io: S) -> Self {
        FixAuthority {
            io,
            rewriter: Rewriter::new(),
            out: Vec::new(),
            out_at: 0,
        }
    }

    /// The connection underneath.
    pub fn get_ref(&self) -> &S {
        &self.io
    }
}

impl<S> std::fmt::Debug for FixAuthority<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FixAuthority")
            .field("mode", &self.rewriter.mode)
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FixAuthority<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_at < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_at);
                buf.put_slice(&this.out[this.out_at..this.out_at + n]);
                this.out_at += n;
                if this.out_at == this.out.len() {
                    this.out.clear();
                    this.out_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.rewriter.mode == Mode::Passthrough {
                return Pin::new(&mut this.io).poll_read(cx, buf);
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.rewriter.finish(&mut this.out);
                if this.out.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            if let Err(e) = this.rewriter.feed(read.filled(), &mut this.out) {
                tracing::debug!(error = %e, "closing a unix-socket connection");
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FixAuthority<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Not yet known whether the client speaks HTTP/2.
    Preface,
    /// HTTP/2: frames are read.
    Frames,
    /// Anything else (HTTP/1.1): bytes pass untouched.
    Passthrough,
}

/// A header block whose CONTINUATION frames are still to come.
struct Block {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

/// The client-to-server byte stream, rewritten frame by frame.
struct Rewriter {
    mode: Mode,
    /// Bytes read but not yet processed: a partial preface or frame.
    pending: Vec<u8>,
    /// Payload bytes of the current non-header frame still to pass through.
    copy: usize,
    block: Option<Block>,
    hpack: loona_hpack::Decoder<'static>,
}

impl Rewriter {
    fn new() -> Rewriter {
        let mut hpack = loona_hpack::Decoder::new();
        hpack.set_max_allowed_table_size(HPACK_TABLE);
        Rewriter {
            mode: Mode::Preface,
            pending: Vec::new(),
            copy: 0,
            block: None,
            hpack,
        }
    }

    /// Takes the next bytes from the client and appends what the server should read to `out`.
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), FramingError> {
        let mut buf = std::mem::take(&mut self.pending);
        buf.extend_from_slice(input);
        let mut at = 0;
        let result = loop {
            let rest = &buf[at..];
            match self.mode {
                Mode::Passthrough => {
                    out.extend_from_slice(rest);
                    at = buf.len();
                    break Ok(());
                }
                Mode::Preface => {
                    let n = rest.len().min(PREFACE.len());
                    if rest[..n] != PREFACE[..n] {
                        self.mode = Mode::Passthrough;
                    } else if n < PREFACE.len() {
                        break Ok(());
                    } else {
                        out.extend_from_slice(PREFACE);
                        at += PREFACE.len();
                        self.mode = Mode::Frames;
                    }
                }
                Mode::Frames if self.copy > 0 => {
                    let n = rest.len().min(self.copy);
                    out.extend_from_slice(&rest[..n]);
                    at += n;
                    self.copy -= n;
                    if self.copy > 0 {
                        break Ok(());
                    }
                }
                Mode::Frames => {
                    let Some(header) = rest.get(..FRAME_HEADER) else {
                        break Ok(());
                    };
                    let len = usize::from(header[0]) << 16
                        | usize::from(header[1]) << 8
                        | usize::from(header[2]);
                    let (kind, flags) = (header[3], header[4]);
                    let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]])
                        & !(1 << 31);
                    if kind != CONTINUATION && self.block.is_some() {
                        break Err(FramingError::OutOfSequence { stream });
                    }
                    if kind != HEADERS && kind != CONTINUATION {
                        out.extend_from_slice(header);
                        at += FRAME_HEADER;
                        self.copy = len;
                        continue;
                    }
                    if len > MAX_BLOCK {
                        break Err(FramingError::TooLarge { stream });
                    }
                    let Some(payload) = rest.get(FRAME_HEADER..FRAME_HEADER + len) else {
                        break Ok(());
                    };
                    if let Err(e) = self.header_frame(kind, flags, stream, payload, out) {
                        break Err(e);
                    }
                    at += FRAME_HEADER + len;
                }
            }
        };
        buf.drain(..at);
        self.pending = buf;
        result
    }

    /// The client closed its side: a partial preface still goes to the server, which judges it.
    fn finish(&mut self, out: &mut Vec<u8>) {
        if self.mode == Mode::Preface {
            out.append(&mut self.pending);
            self.mode = Mode::Passthrough;
        }
    }

    fn header_frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), FramingError> {
        match (kind, &mut self.block) {
            (HEADERS, None) => {
                let mut fields = payload;
                if flags & PADDED != 0 {
                    let (&pad, rest) = fields
                        .split_first()
                        .ok_or(FramingError::ShortFrame { stream })?;
                    let keep = rest
                        .len()
                        .checked_sub(usize::from(pad))
                        .ok_or(FramingError::ShortFrame { stream })?;
                    fields = &rest[..keep];
                }
                let priority = if flags & PRIORITY != 0 {
                    let (priority, rest) = fields
                        .split_first_chunk::<5>()
                        .ok_or(FramingError::ShortFrame { stream })?;
                    fields = rest;
                    Some(*priority)
                } else {
                    None
                };
                self.block = Some(Block {
                    stream,
                    end_stream: flags & END_STREAM != 0,
                    priority,
                    fragment: fields.to_vec(),
                });
            }
            (CONTINUATION, Some(block)) if block.stream == stream => {
                if block.fragment.len() + payload.len() > MAX_BLOCK {
                    return Err(FramingError::TooLarge { stream });
                }
                block.fragment.extend_from_slice(payload);
            }
            _ => return Err(FramingError::OutOfSequence { stream }),
        }
        if flags & END_HEADERS != 0 {
            if let Some(block) = self.block.take() {
                self.rewrite(&block, out)?;
            }
        }
        Ok(())
    }

    /// Decodes a complete header block and sends it on, `:authority` fixed, as HEADERS and
    /// CONTINUATION frames.
    fn rewrite(&mut self, block: &Block, out: &mut Vec<u8>) -> Result<(), FramingError> {
        let stream = block.stream;
        let mut encoded = Vec::with_capacity(block.fragment.len() + 64);
        let mut size = 0;
        self.hpack
            .decode_with_cb(&block.fragment, |name, value| {
                // RFC 7541 §4.1 counts 32 bytes of overhead per field.
                size += name.len() + value.len() + 32;
                if size > MAX_BLOCK {
                    return;
                }
                let value: &[u8] = if &*name == b":authority"
                    && axum::http::uri::Authority::try_from(&*value).is_err()
                {
                    LOCAL_AUTHORITY
                } else {
                    &value
                };
                encode_literal(&name, value, &mut encoded);
            })
            .map_err(|source| FramingError::Hpack { stream, source })?;
        if size > MAX_BLOCK {
            return Err(FramingError::TooLarge { stream });
        }

        let mut flags = 0;
        if block.end_stream {
            flags |= END_STREAM;
        }
        let mut first = Vec::with_capacity(5);
        if let Some(priority) = block.priority {
            flags |= PRIORITY;
            first.extend_from_slice(&priority);
        }
        let take = encoded.len().min(MAX_FRAME - first.len());
        let (head, mut rest) = encoded.split_at(take);
        first.extend_from_slice(head);
        if rest.is_empty() {
            flags |= END_HEADERS;
        }
        write_frame(HEADERS, flags, stream, &first, out);
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME));
            rest = tail;
            let flags = if rest.is_empty() { END_HEADERS } else { 0 };
            write_frame(CONTINUATION, flags, stream, chunk, out);
        }
        Ok(())
    }
}

fn write_frame(kind: u8, flags: u8, stream: u32, payload: &[u8], out: &mut Vec<u8>) {
    let len = payload.len().to_be_bytes();
    out.extend_from_slice(&len[len.len() - 3..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// A "literal header field without indexing — new name" (RFC 7541 §6.2.2), both strings
/// without Huffman coding: it leaves the server's dynamic table untouched.
fn encode_literal(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0);
    encode_string(name, out);
    encode_string(value, out);
}

/// A string literal (RFC 7541 §5.2) with H = 0: its length as a 7-bit-prefix integer (§5.1).
fn encode_string(s: &[u8], out: &mut Vec<u8>) {
    let mut len = s.len();
    if len < 127 {
        out.push(len as u8);
    } else {
        out.push(127);
        len -= 127;
        while len >= 128 {
            out.push((len % 128) as u8 | 0x80);
            len /= 128;
        }
        out.push(len as u8);
    }
    out.extend_from_slice(s);
}

#[cfg(test)]
mod tests {
    use super::*;

    type Fields = Vec<(Vec<u8>, Vec<u8>)>;

    /// A request's header block from a client HPACK encoder with its own dynamic table.
    fn client_block(encoder: &mut loona_hpack::Encoder<'_>, authority: &str) -> Vec<u8> {
        encoder.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", b"/grpc.health.v1.Health/Check"),
            (b":authority", authority.as_bytes()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ])
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_frame(kind, flags, stream, payload, &mut out);
        out
    }

    /// What the server decodes from the rewritten bytes: each header block, with its frames'
    /// flags, and every other frame verbatim.
    fn server_reads(bytes: &[u8]) -> (Vec<(u8, Fields)>, Vec<Vec<u8>>) {
        assert!(bytes.starts_with(PREFACE));
        let mut decoder = loona_hpack::Decoder::new();
        let (mut blocks, mut others) = (Vec::new(), Vec::new());
        let mut rest = &bytes[PREFACE.len()..];
        let mut block = Vec::new();
        let mut flags_seen = 0;
        while !rest.is_empty() {
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            let (kind, flags) = (rest[3], rest[4]);
            let payload = &rest[FRAME_HEADER..FRAME_HEADER + len];
            assert!(len <= MAX_FRAME);
            match kind {
                HEADERS => {
                    flags_seen = flags;
                    let skip = if flags & PRIORITY != 0 { 5 } else { 0 };
                    block.extend_from_slice(&payload[skip..]);
                }
                CONTINUATION => {
                    flags_seen |= flags & END_HEADERS;
                    block.extend_from_slice(payload)
                }
                _ => others.push(rest[..FRAME_HEADER + len].to_vec()),
            }
            if matches!(kind, HEADERS | CONTINUATION) && flags & END_HEADERS != 0 {
                blocks.push((flags_seen, decoder.decode(&block).unwrap()));
                block.clear();
            }
            rest = &rest[FRAME_HEADER + len..];
        }
        (blocks, others)
    }

    fn authority(fields: &Fields) -> &[u8] {
        &fields.iter().find(|(n, _)| n == b":authority").unwrap().1
    }

    #[test]
    fn an_authority_that_is_a_socket_path_becomes_localhost_and_nothing_else_changes() {
        let mut encoder = loona_hpack::Encoder::new();
        let settings = frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]);
        let mut input = PREFACE.to_vec();
        input.extend(&settings);
        for (stream, authority) in [
            (1, "tmp%2Fcorral%2Fcorral.sock"),
            (3, "/run/corral/corral.sock"),
            (5, "localhost:50051"),
            // The second use of a value comes from the client's dynamic table.
            (7, "tmp%2Fcorral%2Fcorral.sock"),
        ] {
            let block = client_block(&mut encoder, authority);
            input.extend(frame(HEADERS, END_HEADERS, stream, &block));
            input.extend(frame(0x0, END_STREAM, stream, b"\0\0\0\0\0"));
        }
        // Byte by byte, as the slowest client would send it.
        let mut rewriter = Rewriter::new();
        let mut out = Vec::new();
        for byte in &input {
            rewriter.feed(std::slice::from_ref(byte), &mut out).unwrap();
        }
        let (blocks, others) = server_reads(&out);
        let authorities: Vec<&[u8]> = blocks.iter().map(|(_, f)| authority(f)).collect();
        assert_eq!(
            authorities,
            [
                &b"localhost"[..],
                b"localhost",
                b"localhost:50051",
                b"localhost"
            ]
        );
        for (flags, fields) in &blocks {
            assert_eq!(*flags, END_HEADERS);
            assert_eq!(fields.len(), 6);
            assert_eq!(
                fields[2],
                (b":path".to_vec(), b"/grpc.health.v1.Health/Check".to_vec())
            );
        }
        assert_eq!(others.len(), 5);
        assert_eq!(others[0], settings);
        assert_eq!(others[1], frame(0x0, END_STREAM, 1, b"\0\0\0\0\0"));
    }

    #[test]
    fn padding_priority_and_continuations_are_read_and_large_blocks_are_split() {
        let mut encoder = loona_hpack::Encoder::new();
        let big = "x".repeat(20_000);
        let mut block = encoder.encode([
            (&b":method"[..], &b"GET"[..]),
            (b":authority", b"%2Fsock"),
            (b"x-big", big.as_bytes()),
        ]);
        let tail = block.split_off(10);
        let mut headers = vec![3u8]; // pad length
        headers.extend([0x80, 0, 0, 1, 7]); // exclusive dependency on 1, weight 7
        headers.extend(&block);
        headers.extend([0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 3, &headers));
        input.extend(frame(CONTINUATION, END_HEADERS, 3, &tail));
        let mut out = Vec::new();
        Rewriter::new().feed(&input, &mut out).unwrap();
        let first = &out[PREFACE.len()..];
        assert_eq!(
            first[4],
            PRIORITY | END_STREAM,
            "no END_HEADERS before the last frame"
        );
        assert_eq!(&first[FRAME_HEADER..FRAME_HEADER + 5], [0x80, 0, 0, 1, 7]);
        let (blocks, others) = server_reads(&out);
        assert!(others.is_empty());
        let [(flags, fields)] = &blocks[..] else {
            panic!("one block: {blocks:?}");
        };
        assert_eq!(*flags, PRIORITY | END_STREAM | END_HEADERS);
        assert_eq!(authority(fields), b"localhost");
        assert_eq!(fields[2].1, big.as_bytes());
    }

    #[test]
    fn http1_passes_untouched() {
        let request = b"GET /v1/vms HTTP/1.1\r\nHost: /run/corral.sock\r\n\r\n";
        let mut out = Vec::new();
        let mut rewriter = Rewriter::new();
        rewriter.feed(&request[..1], &mut out).unwrap();
        rewriter.feed(&request[1..], &mut out).unwrap();
        assert_eq!(out, request);
        assert_eq!(rewriter.mode, Mode::Passthrough);

        let mut out = Vec::new();
        let mut rewriter = Rewriter::new();
        rewriter.feed(&PREFACE[..5], &mut out).unwrap();
        assert!(out.is_empty());
        rewriter.finish(&mut out);
        assert_eq!(out, &PREFACE[..5]);
    }

    #[test]
    fn broken_framing_closes_the_connection() {
        let mut encoder = loona_hpack::Encoder::new();
        let block = client_block(&mut encoder, "localhost");
        let cases = [
            // A DATA frame inside a header block.
            [frame(HEADERS, 0, 1, &block[..4]), frame(0x0, 0, 1, b"x")].concat(),
            // A CONTINUATION of nothing.
            frame(CONTINUATION, END_HEADERS, 1, &block),
            // Padding longer than the frame.
            frame(HEADERS, PADDED | END_HEADERS, 1, &[200, 1, 2]),
            // An index past both tables.
            frame(HEADERS, END_HEADERS, 1, &[0xff, 0x7f]),
            // A frame larger than any header block may be.
            frame(HEADERS, END_HEADERS, 1, &vec![0; MAX_BLOCK + 1]),
        ];
        for case in cases {
            let input = [PREFACE, &case].concat();
            let mut out = Vec::new();
            assert!(Rewriter::new().feed(&input, &mut out).is_err(), "{case:?}");
        }
    }

    #[tokio::test]
    async fn the_stream_reads_rewritten_bytes_and_writes_through() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(64);
        let mut server = FixAuthority::new(server);
        let mut encoder = loona_hpack::Encoder::new();
        let block = client_block(&mut encoder, "tmp%2Fs");
        let input = [PREFACE, &frame(HEADERS, END_HEADERS, 1, &block)].concat();
        let writer = tokio::spawn(async move {
            client.write_all(&input).await.unwrap();
            client.shutdown().await.unwrap();
            let mut reply = String::new();
            client.read_to_string(&mut reply).await.unwrap();
            reply
        });
        let mut read = Vec::new();
        server.read_to_end(&mut read).await.unwrap();
        server.write_all(b"pong").await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), "pong");
        let (blocks, _) = server_reads(&read);
        assert_eq!(authority(&blocks[0].1), b"localhost");
    }
}
