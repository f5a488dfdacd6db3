//! Which session a datagram on the shared UDP port belongs to, decided from the datagram alone.
//! Pure: no socket, so every malformed packet is tested here.
//!
//! RFC 7983 tells the kinds apart by the first byte: STUN (0–3), DTLS (20–63), RTP and RTCP
//! (128–191). A STUN binding request names its session in `USERNAME`: the receiver's ICE
//! username fragment, a colon, the sender's (RFC 8445 §7.2.2). The server's fragment is
//! random per session, so it routes the request; everything else is routed by the address
//! whose STUN request was routed before.

/// What kind of packet a datagram holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// ICE connectivity checks.
    Stun,
    /// The DTLS handshake and the data channel's SCTP.
    Dtls,
    /// Media and its reports.
    Rtp,
    /// Not a WebRTC packet.
    Other,
}

/// The kind of `datagram`, by its first byte (RFC 7983 §7).
pub(super) fn kind(datagram: &[u8]) -> Kind {
    match datagram.first() {
        Some(0..=3) => Kind::Stun,
        Some(20..=63) => Kind::Dtls,
        Some(128..=191) => Kind::Rtp,
        _ => Kind::Other,
    }
}

const HEADER: usize = 20;
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const USERNAME: u16 = 0x0006;

/// The receiver's username fragment named by a STUN message, or `None` when `datagram` is not
/// a well-formed STUN message with a `USERNAME` of the form `ours:theirs`.
pub(super) fn local_ufrag(datagram: &[u8]) -> Option<&str> {
    if datagram.len() < HEADER || datagram[4..8] != MAGIC_COOKIE || kind(datagram) != Kind::Stun {
        return None;
    }
    let length = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    let attributes = datagram.get(HEADER..HEADER + length)?;
    let mut at = 0;
    while at + 4 <= attributes.len() {
        let kind = u16::from_be_bytes([attributes[at], attributes[at + 1]]);
        let len = usize::from(u16::from_be_bytes([attributes[at + 2], attributes[at + 3]]));
        let value = attributes.get(at + 4..at + 4 + len)?;
        if kind == USERNAME {
            let username = std::str::from_utf8(value).ok()?;
            let (ours, theirs) = username.split_once(':')?;
            return (!ours.is_empty() && !theirs.is_empty()).then_some(ours);
        }
        // Attributes are padded to four bytes.
        at += 4 + len.div_ceil(4) * 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binding request with the given attributes (type, value).
    fn stun(attributes: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (kind, value) in attributes {
            body.extend_from_slice(&kind.to_be_bytes());
            body.extend_from_slice(&(value.len() as u16).to_be_bytes());
            body.extend_from_slice(value);
            body.resize(body.len().div_ceil(4) * 4, 0);
        }
        let mut message = vec![0x00, 0x01];
        message.extend_from_slice(&(body.len() as u16).to_be_bytes());
        message.extend_from_slice(&MAGIC_COOKIE);
        message.extend_from_slice(&[7; 12]);
        message.extend_from_slice(&body);
        message
    }

    #[test]
    fn the_first_byte_tells_the_kinds_apart() {
        assert_eq!(kind(&stun(&[])), Kind::Stun);
        assert_eq!(kind(&[22, 254, 253]), Kind::Dtls);
        assert_eq!(kind(&[0x80, 111]), Kind::Rtp);
        assert_eq!(kind(&[0xBF]), Kind::Rtp);
        assert_eq!(kind(&[0xC0]), Kind::Other);
        assert_eq!(kind(&[64]), Kind::Other);
        assert_eq!(kind(&[255]), Kind::Other);
        assert_eq!(kind(&[]), Kind::Other);
    }

    #[test]
    fn the_username_names_the_receivers_fragment_after_other_attributes() {
        let request = stun(&[(0x0024, &[0, 0, 0, 1]), (USERNAME, b"srv1:cli")]);
        assert_eq!(local_ufrag(&request), Some("srv1"));
        // An odd length is padded before the next attribute.
        let request = stun(&[(0x8022, b"abc"), (USERNAME, b"x:y")]);
        assert_eq!(local_ufrag(&request), Some("x"));
    }

    #[test]
    fn anything_malformed_names_no_session() {
        assert_eq!(local_ufrag(&stun(&[])), None, "no username");
        assert_eq!(local_ufrag(&stun(&[(USERNAME, b"nocolon")])), None);
        assert_eq!(local_ufrag(&stun(&[(USERNAME, b":theirs")])), None);
        assert_eq!(local_ufrag(&stun(&[(USERNAME, b"ours:")])), None);
        assert_eq!(local_ufrag(&stun(&[(USERNAME, &[0xff, b':', b'a'])])), None);
        let mut wrong_cookie = stun(&[(USERNAME, b"a:b")]);
        wrong_cookie[4] = 0;
        assert_eq!(local_ufrag(&wrong_cookie), None);
        let mut overlong = stun(&[(USERNAME, b"a:b")]);
        overlong[3] = 200;
        assert_eq!(local_ufrag(&overlong), None, "length past the datagram");
        let mut attribute_overlong = stun(&[(USERNAME, b"a:b")]);
        attribute_overlong[HEADER + 3] = 40;
        assert_eq!(local_ufrag(&attribute_overlong), None);
        assert_eq!(local_ufrag(&[0; 19]), None, "shorter than a header");
        let mut rtp = stun(&[(USERNAME, b"a:b")]);
        rtp[0] = 0x80;
        assert_eq!(local_ufrag(&rtp), None, "not STUN");
    }

    proptest::proptest! {
        /// Any bytes after a STUN header, with any declared length, are read without a panic
        /// and never name an empty fragment.
        #[test]
        fn any_attributes_are_read_without_a_panic(
            length in 0u16..300,
            attributes in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
        ) {
            let mut datagram = vec![0x00, 0x01];
            datagram.extend_from_slice(&length.to_be_bytes());
            datagram.extend_from_slice(&MAGIC_COOKIE);
            datagram.extend_from_slice(&[0; 12]);
            datagram.extend_from_slice(&attributes);
            if let Some(ufrag) = local_ufrag(&datagram) {
                proptest::prop_assert!(!ufrag.is_empty());
            }
        }
    }
}
