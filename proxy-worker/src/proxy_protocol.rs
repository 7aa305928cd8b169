//! The PROXY protocol header a TCP load balancer puts in front of a connection (docs/http.md,
//! "PROXY protocol"): version 1 (one text line) and version 2 (binary). The parser is pure and
//! works on a prefix of the stream, so the reader can take exactly the header's bytes and leave
//! the rest (an HTTP request, a TLS ClientHello) in the socket for whoever comes next.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// A version 1 line is at most 107 bytes, CRLF included ("PROXY TCP6 " and two full IPv6
/// addresses and ports).
pub const V1_MAX: usize = 107;
/// The version 2 signature: 12 bytes no HTTP request or TLS record can start with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Version 2 fixed part: signature, version/command, family/transport, length.
const V2_FIXED: usize = 16;
/// The longest version 2 payload (addresses and TLVs) we accept. Balancers send addresses and
/// a few short TLVs (an endpoint id, an ALPN, a TLS version); 2 KiB leaves room for those and
/// bounds what one connection can make us read before it has said anything.
pub const V2_MAX_PAYLOAD: usize = 2048;
/// How long a peer has to send the whole header: the same as a TLS handshake.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What a complete header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// The connection is a client's: this is its address.
    Proxied(SocketAddr),
    /// The balancer's own connection (v2 `LOCAL`, v1 `UNKNOWN`, v2 `UNSPEC`): the socket's
    /// peer address stays the peer.
    Local,
}

/// Where parsing a prefix of the stream got to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parse {
    /// Valid so far. `need` is how many bytes (in total, from the start) must be there before
    /// the parser can say more: exact for version 2, a lower bound for a version 1 line
    /// (whose end is not known yet) and before the first byte.
    Incomplete { need: usize },
    /// A whole header, `len` bytes long. For version 2 `len` can exceed the bytes given: the
    /// parser needs only the addresses, the TLVs after them are skipped unread.
    Done { header: Header, len: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("no PROXY protocol signature")]
    NoSignature,
    #[error("malformed PROXY protocol v1 line")]
    BadV1,
    #[error("PROXY protocol v1 line longer than 107 bytes")]
    V1TooLong,
    #[error("unsupported PROXY protocol v2 version or command")]
    BadV2Command,
    #[error("unsupported PROXY protocol v2 address family or transport")]
    BadV2Family,
    #[error("PROXY protocol v2 length too short for its addresses or over 2048 bytes")]
    BadV2Length,
    #[error("connection closed before the PROXY protocol header ended")]
    Eof,
    #[error("no complete PROXY protocol header within 10 s")]
    Timeout,
    #[error("reading the PROXY protocol header: {0}")]
    Io(std::io::ErrorKind),
}

/// Parses a prefix of a connection's bytes. Never reads past `buf`, never allocates.
pub fn parse(buf: &[u8]) -> Result<Parse, ProxyHeaderError> {
    match buf.first() {
        None => Ok(Parse::Incomplete { need: 1 }),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Err(ProxyHeaderError::NoSignature),
    }
}

fn parse_v1(buf: &[u8]) -> Result<Parse, ProxyHeaderError> {
    const PREFIX: &[u8] = b"PROXY ";
    let head = &buf[..buf.len().min(PREFIX.len())];
    if head != &PREFIX[..head.len()] {
        return Err(ProxyHeaderError::NoSignature);
    }
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        if buf.len() >= V1_MAX {
            return Err(ProxyHeaderError::V1TooLong);
        }
        // Only printable ASCII and the final CR belong in the line: garbage fails early.
        if window
            .iter()
            .any(|&b| !(b' '..=b'~').contains(&b) && b != b'\r')
            || window[..window.len().saturating_sub(1)].contains(&b'\r')
        {
            return Err(ProxyHeaderError::BadV1);
        }
        return Ok(Parse::Incomplete {
            need: buf.len() + 1,
        });
    };
    let len = lf + 1;
    let line = window[..lf]
        .strip_suffix(b"\r")
        .ok_or(ProxyHeaderError::BadV1)?;
    if line.len() < PREFIX.len() {
        return Err(ProxyHeaderError::BadV1);
    }
    let line = std::str::from_utf8(&line[PREFIX.len()..]).map_err(|_| ProxyHeaderError::BadV1)?;
    let mut fields = line.split(' ');
    let family = fields.next().ok_or(ProxyHeaderError::BadV1)?;
    if family == "UNKNOWN" {
        // The rest of the line is whatever the sender had: ignored, as the protocol says.
        if line.bytes().any(|b| !(b' '..=b'~').contains(&b)) {
            return Err(ProxyHeaderError::BadV1);
        }
        return Ok(Parse::Done {
            header: Header::Local,
            len,
        });
    }
    let (src, dst, sport, dport) = match (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) {
        (Some(a), Some(b), Some(c), Some(d), None) => (a, b, c, d),
        _ => return Err(ProxyHeaderError::BadV1),
    };
    let (src, dst): (IpAddr, IpAddr) = match family {
        "TCP4" => (
            IpAddr::V4(src.parse().map_err(|_| ProxyHeaderError::BadV1)?),
            IpAddr::V4(dst.parse().map_err(|_| ProxyHeaderError::BadV1)?),
        ),
        "TCP6" => (
            IpAddr::V6(src.parse().map_err(|_| ProxyHeaderError::BadV1)?),
            IpAddr::V6(dst.parse().map_err(|_| ProxyHeaderError::BadV1)?),
        ),
        _ => return Err(ProxyHeaderError::BadV1),
    };
    let _ = dst;
    let sport = v1_port(sport)?;
    v1_port(dport)?;
    Ok(Parse::Done {
        header: Header::Proxied(SocketAddr::new(src, sport)),
        len,
    })
}

/// A port as version 1 writes it: decimal, 1-5 digits, no sign, no leading zero.
fn v1_port(s: &str) -> Result<u16, ProxyHeaderError> {
    let digits = !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits || (s.len() > 1 && s.starts_with('0')) {
        return Err(ProxyHeaderError::BadV1);
    }
    s.parse().map_err(|_| ProxyHeaderError::BadV1)
}

fn parse_v2(buf: &[u8]) -> Result<Parse, ProxyHeaderError> {
    let sig = &buf[..buf.len().min(V2_SIGNATURE.len())];
    if sig != &V2_SIGNATURE[..sig.len()] {
        return Err(ProxyHeaderError::NoSignature);
    }
    if buf.len() < V2_FIXED {
        return Ok(Parse::Incomplete { need: V2_FIXED });
    }
    let (version, command) = (buf[12] >> 4, buf[12] & 0x0f);
    if version != 2 || command > 1 {
        return Err(ProxyHeaderError::BadV2Command);
    }
    let payload = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if payload > V2_MAX_PAYLOAD {
        return Err(ProxyHeaderError::BadV2Length);
    }
    let len = V2_FIXED + payload;
    // Address block sizes: TCP over IPv4, TCP over IPv6; UNSPEC carries none.
    let addrs = match buf[13] {
        0x00 => 0,
        0x11 => 12,
        0x21 => 36,
        // A LOCAL connection's addresses are ignored whatever they are.
        _ if command == 0 => 0,
        // UDP and Unix sockets cannot be behind a TCP listener.
        _ => return Err(ProxyHeaderError::BadV2Family),
    };
    if payload < addrs {
        return Err(ProxyHeaderError::BadV2Length);
    }
    if command == 0 || addrs == 0 {
        return Ok(Parse::Done {
            header: Header::Local,
            len,
        });
    }
    let need = V2_FIXED + addrs;
    if buf.len() < need {
        return Ok(Parse::Incomplete { need });
    }
    let a = &buf[V2_FIXED..need];
    let source = if addrs == 12 {
        let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
        SocketAddr::new(IpAddr::V4(ip), u16::from_be_bytes([a[8], a[9]]))
    } else {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&a[..16]);
        SocketAddr::new(
            IpAddr::V6(Ipv6Addr::from(octets)),
            u16::from_be_bytes([a[32], a[33]]),
        )
    };
    Ok(Parse::Done {
        header: Header::Proxied(source),
        len,
    })
}

/// Reads one header off `stream`, within [`HEADER_TIMEOUT`], taking exactly its bytes: what
/// follows stays in the socket. The text line's end is found by peeking and the binary form
/// says its length, so nothing is read ahead and nothing needs to be put back.
pub async fn read_header(stream: &mut TcpStream) -> Result<Header, ProxyHeaderError> {
    match tokio::time::timeout(HEADER_TIMEOUT, read_header_inner(stream)).await {
        Ok(result) => result,
        Err(_) => Err(ProxyHeaderError::Timeout),
    }
}

async fn read_header_inner(stream: &mut TcpStream) -> Result<Header, ProxyHeaderError> {
    // Large enough for a v1 line and a v2 header up to its addresses (16 + 36 bytes).
    let mut buf = [0u8; V1_MAX];
    let mut have = 0;
    let io = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => ProxyHeaderError::Eof,
        kind => ProxyHeaderError::Io(kind),
    };
    loop {
        match parse(&buf[..have])? {
            Parse::Done { header, len } => {
                skip(stream, len - have).await.map_err(io)?;
                return Ok(header);
            }
            // Version 2 says how much it needs exactly.
            Parse::Incomplete { need } if have > 0 && buf[0] == b'\r' => {
                stream.read_exact(&mut buf[have..need]).await.map_err(io)?;
                have = need;
            }
            Parse::Incomplete { .. } => {
                // Up to the first LF of what arrived: a v1 line ends there, and the v2
                // signature's first LF is its second byte, after which its length is known.
                let n = stream.peek(&mut buf[have..]).await.map_err(io)?;
                if n == 0 {
                    return Err(ProxyHeaderError::Eof);
                }
                let take = buf[have..have + n]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(n, |i| i + 1);
                stream
                    .read_exact(&mut buf[have..have + take])
                    .await
                    .map_err(io)?;
                have += take;
            }
        }
    }
}

/// Reads and drops `n` bytes (a v2 header's TLVs), at most [`V2_MAX_PAYLOAD`].
async fn skip(stream: &mut TcpStream, mut n: usize) -> std::io::Result<()> {
    let mut scratch = [0u8; 256];
    while n > 0 {
        let chunk = n.min(scratch.len());
        stream.read_exact(&mut scratch[..chunk]).await?;
        n -= chunk;
    }
    Ok(())
}

/// Parses a whole input as the fuzz target feeds it: a complete header's length never
/// exceeds its bound, and the parser's answer does not change when more bytes follow.
#[doc(hidden)]
pub fn fuzz(data: &[u8]) {
    match parse(data) {
        Ok(Parse::Done { len, .. }) => {
            assert!(len <= V1_MAX.max(V2_FIXED + V2_MAX_PAYLOAD));
            if data.first() == Some(&b'P') {
                assert!(len <= data.len(), "a v1 line is complete in what was given");
                assert_eq!(parse(&data[..len]), parse(data));
            }
        }
        Ok(Parse::Incomplete { need }) => {
            assert!(need > data.len() && need <= V1_MAX.max(V2_FIXED + 36));
        }
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(buf: &[u8]) -> (Header, usize) {
        match parse(buf) {
            Ok(Parse::Done { header, len }) => (header, len),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    fn v2(command: u8, family: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn v1_tcp4_tcp6_unknown() {
        let line = b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 80\r\nGET / HTTP/1.1\r\n";
        let (h, len) = done(line);
        assert_eq!(h, Header::Proxied("203.0.113.7:51234".parse().unwrap()));
        assert_eq!(&line[len..len + 3], b"GET");
        let (h, _) = done(b"PROXY TCP6 2001:db8::7 2001:db8::1 65535 443\r\n");
        assert_eq!(h, Header::Proxied("[2001:db8::7]:65535".parse().unwrap()));
        assert_eq!(done(b"PROXY UNKNOWN\r\n"), (Header::Local, 15));
        assert_eq!(done(b"PROXY UNKNOWN ff 1 2 3\r\n").0, Header::Local);
        let longest = format!(
            "PROXY TCP6 {a} {a} 65535 65535\r\n",
            a = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        );
        assert_eq!(done(longest.as_bytes()).1, 104);
        // The protocol's own bound: UNKNOWN with the longest addresses.
        let longest = longest.replacen("TCP6", "UNKNOWN", 1);
        assert_eq!(done(longest.as_bytes()), (Header::Local, V1_MAX));
    }

    #[test]
    fn v1_incomplete_then_errors() {
        assert_eq!(parse(b""), Ok(Parse::Incomplete { need: 1 }));
        assert_eq!(parse(b"PRO"), Ok(Parse::Incomplete { need: 4 }));
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4"),
            Ok(Parse::Incomplete { need: 19 })
        );
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PROXZ",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
            b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4\r5.6.7.8 1 2",
            b"PROXY \x00",
            b"PROXY\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = [b"PROXY ".as_slice(), &[b'A'; 101]].concat();
        assert_eq!(parse(&long), Err(ProxyHeaderError::V1TooLong));
    }

    #[test]
    fn v2_tcp4_tcp6_local_and_tlvs() {
        let mut p = vec![203, 0, 113, 7, 192, 0, 2, 1];
        p.extend_from_slice(&51234u16.to_be_bytes());
        p.extend_from_slice(&443u16.to_be_bytes());
        let h = v2(1, 0x11, &p);
        assert_eq!(
            done(&h),
            (Header::Proxied("203.0.113.7:51234".parse().unwrap()), 28)
        );
        // TLVs after the addresses are counted in the length but not needed to parse.
        let mut with_tlv = p.clone();
        with_tlv.extend_from_slice(&[0x04, 0x00, 0x03, b'a', b'b', b'c']);
        let h = v2(1, 0x11, &with_tlv);
        assert_eq!(done(&h[..28]).1, 34);

        let mut p6 = "2001:db8::7".parse::<Ipv6Addr>().unwrap().octets().to_vec();
        p6.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        p6.extend_from_slice(&1u16.to_be_bytes());
        p6.extend_from_slice(&2u16.to_be_bytes());
        let h = v2(1, 0x21, &p6);
        assert_eq!(
            done(&h).0,
            Header::Proxied("[2001:db8::7]:1".parse().unwrap())
        );
        assert_eq!(parse(&h[..20]), Ok(Parse::Incomplete { need: 52 }));

        assert_eq!(done(&v2(0, 0x00, &[])), (Header::Local, 16));
        assert_eq!(done(&v2(0, 0x11, &p)).0, Header::Local);
        assert_eq!(done(&v2(0, 0x31, &[0; 216])).0, Header::Local);
        assert_eq!(done(&v2(1, 0x00, &[1, 2, 3])), (Header::Local, 19));
    }

    #[test]
    fn v2_errors() {
        assert_eq!(parse(b"\r\n\r\n"), Ok(Parse::Incomplete { need: 16 }));
        assert_eq!(parse(b"\r\n\r\nX"), Err(ProxyHeaderError::NoSignature));
        let mut h = v2(1, 0x11, &[0; 12]);
        h[12] = 0x11;
        assert_eq!(parse(&h), Err(ProxyHeaderError::BadV2Command));
        h[12] = 0x22;
        assert_eq!(parse(&h), Err(ProxyHeaderError::BadV2Command));
        assert_eq!(
            parse(&v2(1, 0x12, &[0; 12])),
            Err(ProxyHeaderError::BadV2Family)
        );
        assert_eq!(
            parse(&v2(1, 0x21, &[0; 12])),
            Err(ProxyHeaderError::BadV2Length)
        );
        let big = v2(1, 0x11, &vec![0; V2_MAX_PAYLOAD + 1]);
        assert_eq!(parse(&big), Err(ProxyHeaderError::BadV2Length));
    }

    #[tokio::test]
    async fn reads_exactly_the_header() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut p = vec![10, 0, 0, 1, 10, 0, 0, 2, 0, 80, 0, 81];
        p.extend_from_slice(&[0x04, 0x00, 0x01, b'x']);
        let cases: Vec<(Vec<u8>, Header)> = vec![
            (
                b"PROXY TCP4 10.0.0.1 10.0.0.2 80 81\r\n".to_vec(),
                Header::Proxied("10.0.0.1:80".parse().unwrap()),
            ),
            (
                v2(1, 0x11, &p),
                Header::Proxied("10.0.0.1:80".parse().unwrap()),
            ),
            (b"PROXY UNKNOWN\r\n".to_vec(), Header::Local),
        ];
        for (header, want) in cases {
            let mut client = TcpStream::connect(addr).await.unwrap();
            let (mut server, _) = listener.accept().await.unwrap();
            // Byte by byte: the reader must wait for the rest, not give up or over-read.
            for b in &header {
                client.write_all(&[*b]).await.unwrap();
                client.flush().await.unwrap();
            }
            client.write_all(b"GET").await.unwrap();
            assert_eq!(read_header(&mut server).await, Ok(want));
            let mut rest = [0u8; 3];
            server.read_exact(&mut rest).await.unwrap();
            assert_eq!(&rest, b"GET");
        }
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        client.write_all(b"PROXY TCP4 1.2.3.4").await.unwrap();
        drop(client);
        assert_eq!(read_header(&mut server).await, Err(ProxyHeaderError::Eof));
    }

    #[tokio::test(start_paused = true)]
    async fn a_header_that_never_ends_times_out() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        client.write_all(b"PROXY TCP4 1.2.3.4").await.unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(
            read_header(&mut server).await,
            Err(ProxyHeaderError::Timeout)
        );
        assert_eq!(started.elapsed(), HEADER_TIMEOUT);
        drop(client);
    }
}
