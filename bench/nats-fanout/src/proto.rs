//! The few NATS protocol operations a subscriber and a publisher need, parsed from a byte buffer
//! without copying a payload (`MSG`'s body is split off the read buffer).
//!
//! Reference: the NATS client protocol (`INFO`, `CONNECT`, `PUB`, `SUB`, `MSG`, `PING`, `PONG`,
//! `+OK`, `-ERR`), each line ending in CRLF.

use bytes::{Buf, Bytes, BytesMut};

/// One operation the server sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Op {
    Info,
    Msg { payload: Bytes },
    Ping,
    Pong,
    Ok,
    Err(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    #[error("the server sent an operation this client does not know: {0:?}")]
    Unknown(String),
    #[error("the server sent a MSG line without a valid size: {0:?}")]
    BadMsg(String),
    #[error("the server sent a line longer than {0} bytes without an end")]
    LineTooLong(usize),
}

/// Longest control line accepted (the server's `INFO` carries its configuration, a few hundred
/// bytes; `max_control_line` defaults to 4 KiB).
const MAX_LINE: usize = 64 * 1024;

/// Takes one complete operation off the front of `buf`, or `None` when more bytes are needed.
pub fn parse(buf: &mut BytesMut) -> Result<Option<Op>, ProtoError> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > MAX_LINE {
            return Err(ProtoError::LineTooLong(MAX_LINE));
        }
        return Ok(None);
    };
    let line_end = if nl > 0 && buf[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    let line = &buf[..line_end];
    let op = if line.starts_with(b"MSG ") {
        let size = std::str::from_utf8(line)
            .ok()
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| ProtoError::BadMsg(String::from_utf8_lossy(line).into_owned()))?;
        // The payload and its CRLF must all be here before anything is taken.
        if buf.len() < nl + 1 + size + 2 {
            return Ok(None);
        }
        buf.advance(nl + 1);
        let payload = buf.split_to(size).freeze();
        buf.advance(2);
        return Ok(Some(Op::Msg { payload }));
    } else if line == b"PING" {
        Op::Ping
    } else if line == b"PONG" {
        Op::Pong
    } else if line == b"+OK" {
        Op::Ok
    } else if line.starts_with(b"INFO ") || line == b"INFO" {
        Op::Info
    } else if let Some(rest) = line.strip_prefix(b"-ERR") {
        Op::Err(String::from_utf8_lossy(rest).trim().to_string())
    } else {
        return Err(ProtoError::Unknown(
            String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned(),
        ));
    };
    buf.advance(nl + 1);
    Ok(Some(op))
}

/// The payload of a timed message: the send time in nanoseconds since the Unix epoch as 20 ASCII
/// digits, padded with `x` to `size` bytes (at least 20).
pub fn timed_payload(sent_ns: u128, size: usize) -> Vec<u8> {
    let mut p = format!("{sent_ns:020}").into_bytes();
    p.resize(size.max(20), b'x');
    p
}

/// The send time a timed payload carries, if it is one.
pub fn sent_ns(payload: &[u8]) -> Option<u128> {
    let digits = payload.get(..20)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8]) -> Vec<Op> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(op) = parse(&mut buf).expect("valid input") {
            out.push(op);
        }
        assert!(buf.is_empty(), "left over: {buf:?}");
        out
    }

    #[test]
    fn parses_every_operation_and_splits_payloads() {
        let ops = all(b"INFO {\"server_id\":\"x\"}\r\n+OK\r\nPING\r\nMSG ch.1 7 5\r\nhello\r\nMSG ch.2 1 reply.to 3\r\nabc\r\nPONG\r\n-ERR 'Slow Consumer'\r\n");
        assert_eq!(
            ops,
            vec![
                Op::Info,
                Op::Ok,
                Op::Ping,
                Op::Msg {
                    payload: Bytes::from_static(b"hello")
                },
                Op::Msg {
                    payload: Bytes::from_static(b"abc")
                },
                Op::Pong,
                Op::Err("'Slow Consumer'".into()),
            ]
        );
    }

    #[test]
    fn waits_for_a_whole_message_byte_by_byte() {
        let input = b"MSG ch.1 7 11\r\nhello world\r\nPING\r\n";
        let mut buf = BytesMut::new();
        let mut ops = Vec::new();
        for &b in input {
            buf.extend_from_slice(&[b]);
            while let Some(op) = parse(&mut buf).expect("valid") {
                ops.push(op);
            }
        }
        assert_eq!(
            ops,
            vec![
                Op::Msg {
                    payload: Bytes::from_static(b"hello world")
                },
                Op::Ping
            ]
        );
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        let mut buf = BytesMut::from(&b"HELLO\r\n"[..]);
        assert_eq!(parse(&mut buf), Err(ProtoError::Unknown("HELLO".into())));
        let mut buf = BytesMut::from(&b"MSG ch 1 many\r\n"[..]);
        assert!(matches!(parse(&mut buf), Err(ProtoError::BadMsg(_))));
        let mut buf = BytesMut::from(&vec![b'a'; MAX_LINE + 1][..]);
        assert_eq!(parse(&mut buf), Err(ProtoError::LineTooLong(MAX_LINE)));
    }

    #[test]
    fn timed_payloads_round_trip() {
        let p = timed_payload(1_764_000_000_123_456_789, 700);
        assert_eq!(p.len(), 700);
        assert_eq!(sent_ns(&p), Some(1_764_000_000_123_456_789));
        assert_eq!(timed_payload(5, 3).len(), 20);
        assert_eq!(sent_ns(b"not a timestamp at all"), None);
        assert_eq!(sent_ns(b"123"), None);
    }
}
