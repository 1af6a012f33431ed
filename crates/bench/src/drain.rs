//! The MQTT ceiling: the least a QoS 1 subscriber can do with a backlog, so that the broker's
//! hand-off is the only limit measured.
//!
//! `mosquitto_sub` is not that. libmosquitto reads a packet's fixed header, length and body
//! in separate `read` calls and writes each PUBACK on its own, so draining a QoS 1 backlog
//! costs it about five system calls per message on the same two cores the broker needs; on
//! this project's 2-core machines it used a whole core and capped the "ceiling" below what
//! jobstream itself reached. This drain reads whatever the socket holds (up to
//! [`READ_BUFFER`]), walks every complete packet in it, and answers all the QoS 1 PUBLISHes
//! found with one write of their PUBACKs. It does nothing with a payload, so its rate is the
//! broker's, to within the cost of one read and one write per buffer.
//!
//! It resumes a persistent session the bench has already subscribed (MQTT 3.1.1, clean
//! session off), and refuses to start if the broker has no such session (the backlog would
//! not be there).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::error::{BenchError, IoContext as _};

/// What the drain prints once it has taken every message, before it disconnects.
pub const DRAINED_LINE: &str = "drained";

/// Bytes read per system call at most: several hundred QoS 1 messages of a fleet's size.
const READ_BUFFER: usize = 1 << 20;

/// The raw drain's settings (`jobstream bench-drain`, which bench starts as its `ceiling`).
#[derive(Debug, clap::Args)]
pub struct DrainArgs {
    /// Broker host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Broker port.
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// Client id of the persistent session holding the backlog.
    #[arg(long)]
    client_id: String,
    /// Messages to take before disconnecting.
    #[arg(long)]
    count: u64,
    /// Seconds to wait for the whole count before giving up.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

/// What a drain did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// QoS 1 PUBLISHes taken and acknowledged.
    pub messages: u64,
    /// Read calls that returned data.
    pub reads: u64,
}

/// Drains `count` messages from the session `client_id` and disconnects.
///
/// Execution model: blocking, on the calling thread, one TCP connection.
///
/// # Errors
/// [`BenchError::Io`] when the connection fails or closes early, [`BenchError::Run`] when
/// the broker refuses the session, has none stored for this client id, sends something that
/// is not MQTT 3.1.1, or the count is not reached within the timeout.
pub fn drain(args: &DrainArgs) -> Result<Drained, BenchError> {
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let address = format!("{}:{}", args.host, args.port);
    let mut stream = TcpStream::connect(&address).io_with(|| format!("connecting to {address}"))?;
    stream.set_nodelay(true).io("setting TCP_NODELAY")?;
    stream
        .write_all(&connect_packet(&args.client_id)?)
        .io("sending CONNECT")?;

    let mut buffer = vec![0u8; READ_BUFFER];
    let mut filled = 0usize;
    let mut acks: Vec<u8> = Vec::with_capacity(READ_BUFFER / 64);
    let mut connected = false;
    let mut drained = Drained {
        messages: 0,
        reads: 0,
    };
    while drained.messages < args.count {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(BenchError::Run(format!(
                "the raw drain took {} of {} messages in {} s",
                drained.messages, args.count, args.timeout_secs
            )));
        }
        stream
            .set_read_timeout(Some(left))
            .io("setting the read timeout")?;
        if filled == buffer.len() {
            // A packet larger than the buffer: grow once for it (fleet events are < 2 KiB).
            buffer.resize(buffer.len() * 2, 0);
        }
        let read = stream
            .read(&mut buffer[filled..])
            .io("reading from the broker")?;
        if read == 0 {
            return Err(BenchError::Run(format!(
                "the broker closed the connection after {} of {} messages",
                drained.messages, args.count
            )));
        }
        drained.reads += 1;
        filled += read;
        let mut at = 0usize;
        while let Some(packet) = packet_at(&buffer[at..filled])? {
            match packet.header >> 4 {
                2 => {
                    check_connack(packet.body)?;
                    connected = true;
                }
                3 => {
                    drained.messages += 1;
                    if let Some(id) = publish_packet_id(packet.header, packet.body)? {
                        acks.extend_from_slice(&[0x40, 0x02, id[0], id[1]]);
                    }
                }
                // PINGRESP and anything else a QoS 1 subscriber may see needs no answer.
                _ => {}
            }
            at += packet.len;
        }
        buffer.copy_within(at..filled, 0);
        filled -= at;
        if !acks.is_empty() {
            stream.write_all(&acks).io("sending PUBACKs")?;
            acks.clear();
        }
        if !connected && drained.messages > 0 {
            return Err(BenchError::Run("PUBLISH before CONNACK".into()));
        }
    }
    // The hand-off is complete: bench stops its clock on this line, not on the exit below,
    // which waits for the broker to read every PUBACK first (a broker takes its time over
    // acknowledgements, and no other contender's clock waits for them either).
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{DRAINED_LINE} {}", drained.messages);
        let _ = out.flush();
    }
    // DISCONNECT: the session stays, with nothing left unacknowledged. Then wait for the
    // broker to close its side: closing ours first, with anything it sent still unread,
    // would reset the connection, and a reset can discard PUBACKs the broker has received
    // but not yet read (seen: thousands of a 3,000-message backlog left unacknowledged).
    stream.write_all(&[0xE0, 0x00]).io("sending DISCONNECT")?;
    stream
        .shutdown(std::net::Shutdown::Write)
        .io("closing the connection")?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .io("setting the read timeout")?;
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) => return Err(error).io("waiting for the broker to close"),
        }
    }
    Ok(drained)
}

fn connect_packet(client_id: &str) -> Result<Vec<u8>, BenchError> {
    let id_len = u16::try_from(client_id.len())
        .map_err(|_| BenchError::InvalidFlag("--client-id is longer than 65,535 bytes".into()))?;
    let mut body = Vec::with_capacity(12 + client_id.len());
    // Protocol "MQTT", level 4 (3.1.1), flags 0 (clean session off), keep-alive 0 (none: a
    // drain that stalls fails on its own timeout instead).
    body.extend_from_slice(&[0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x00, 0x00, 0x00]);
    body.extend_from_slice(&id_len.to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut packet = vec![0x10];
    let mut length = body.len();
    loop {
        let mut byte = (length % 128) as u8;
        length /= 128;
        if length > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if length == 0 {
            break;
        }
    }
    packet.extend_from_slice(&body);
    Ok(packet)
}

/// One complete MQTT packet in the read buffer.
struct Packet<'a> {
    /// The fixed header's first byte: type and flags.
    header: u8,
    /// Everything after the remaining length.
    body: &'a [u8],
    /// The packet's whole length in the buffer.
    len: usize,
}

/// The complete packet at the start of `bytes`; `None` when more bytes are needed.
fn packet_at(bytes: &[u8]) -> Result<Option<Packet<'_>>, BenchError> {
    let Some(&header) = bytes.first() else {
        return Ok(None);
    };
    let mut length = 0usize;
    let mut shift = 0u32;
    let mut index = 1usize;
    loop {
        let Some(&byte) = bytes.get(index) else {
            return Ok(None);
        };
        length |= usize::from(byte & 0x7F) << shift;
        index += 1;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            return Err(BenchError::Run(
                "the broker sent a remaining length of more than 4 bytes".into(),
            ));
        }
    }
    let end = index + length;
    Ok(bytes.get(index..end).map(|body| Packet {
        header,
        body,
        len: end,
    }))
}

fn check_connack(body: &[u8]) -> Result<(), BenchError> {
    match body {
        [flags, 0] if flags & 1 == 1 => Ok(()),
        [_, 0] => Err(BenchError::Run(
            "the broker holds no session for this client id (session present = 0): subscribe it with clean session off first".into(),
        )),
        [_, code] => Err(BenchError::Run(format!(
            "the broker refused the connection (CONNACK return code {code})"
        ))),
        _ => Err(BenchError::Run("a malformed CONNACK".into())),
    }
}

/// The packet id of a QoS 1 PUBLISH, `None` for QoS 0.
fn publish_packet_id(header: u8, body: &[u8]) -> Result<Option<[u8; 2]>, BenchError> {
    let qos = (header >> 1) & 0x03;
    if qos == 0 {
        return Ok(None);
    }
    if qos != 1 {
        return Err(BenchError::Run(format!(
            "a QoS {qos} PUBLISH: the drain subscribes at QoS 1"
        )));
    }
    let malformed = || BenchError::Run("a malformed PUBLISH".into());
    let topic_len = usize::from(u16::from_be_bytes(
        body.get(..2)
            .ok_or_else(malformed)?
            .try_into()
            .map_err(|_| malformed())?,
    ));
    let id = body
        .get(2 + topic_len..4 + topic_len)
        .ok_or_else(malformed)?;
    Ok(Some([id[0], id[1]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connect_packet_resumes_the_session_under_the_client_id() {
        let packet = connect_packet("bench-1").expect("a short client id");
        assert_eq!(packet[0], 0x10);
        assert_eq!(usize::from(packet[1]), packet.len() - 2);
        assert_eq!(packet[9], 0x00, "clean session must be off");
        assert_eq!(&packet[12..14], &[0, 7]);
        assert_eq!(&packet[14..], b"bench-1");
    }

    #[test]
    fn packets_are_split_only_when_complete() {
        // A QoS 1 PUBLISH, topic "a/b", id 0x0102, payload "xy".
        let publish = [
            0x32, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x01, 0x02, b'x', b'y',
        ];
        assert!(packet_at(&publish[..5])
            .expect("well-formed so far")
            .is_none());
        let packet = packet_at(&publish).expect("well-formed").expect("complete");
        assert_eq!((packet.header, packet.len), (0x32, publish.len()));
        assert_eq!(
            publish_packet_id(packet.header, packet.body).expect("a QoS 1 PUBLISH"),
            Some([1, 2])
        );
    }

    #[test]
    fn a_remaining_length_is_read_over_several_bytes() {
        let mut packet = vec![0x30, 0x80, 0x01];
        packet.extend(std::iter::repeat_n(0u8, 128));
        let parsed = packet_at(&packet).expect("well-formed").expect("complete");
        assert_eq!((parsed.body.len(), parsed.len), (128, 131));
    }

    #[test]
    fn a_connack_without_a_stored_session_is_refused() {
        assert!(check_connack(&[1, 0]).is_ok());
        assert!(check_connack(&[0, 0]).is_err());
        assert!(check_connack(&[1, 5]).is_err());
    }

    #[test]
    fn a_truncated_publish_is_an_error_not_a_panic() {
        assert!(publish_packet_id(0x32, &[0x00, 0x09, b'a']).is_err());
        assert!(publish_packet_id(0x36, &[]).is_err());
    }
}
