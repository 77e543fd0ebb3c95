//! DNS answers to the sessions' sockets: parsed into `dns` events, and remembered per session
//! (address to the name asked for), so that a connect to an answered address carries `host`.
use std::{collections::HashMap, net::IpAddr};

use simple_dns::{rdata::RData, Packet, QTYPE};

use crate::model::event::Detail;

/// Addresses remembered over every session before the oldest half goes.
const NAMES_MAX: usize = 65_536;

/// Queries remembered over every session before the expired ones go.
const ASKED_MAX: usize = 65_536;
/// How long a query waits for its answer.
const ASKED_FOR: std::time::Duration = std::time::Duration::from_secs(30);

/// One query a session sent: the session, the socket's port, the resolver, the message id.
type Asked = (u64, u16, IpAddr, u16);

/// The names the sessions resolved, by (session, address), and the queries they sent.
#[derive(Debug, Default)]
pub struct Names {
    by_addr: HashMap<(u64, IpAddr), (String, u64)>,
    /// Insertion counter, to forget the oldest first.
    tick: u64,
    /// Queries waiting for an answer, with the name asked (lower case) and when.
    asked: HashMap<Asked, (String, std::time::Instant)>,
}

impl Names {
    /// A query `session` sent from its socket's `port` to `resolver`.
    pub fn asked(&mut self, session: u64, port: u16, resolver: IpAddr, id: u16, name: &str) {
        if self.asked.len() >= ASKED_MAX {
            self.asked.retain(|_, (_, at)| at.elapsed() < ASKED_FOR);
            if self.asked.len() >= ASKED_MAX {
                // A session that asks that much is a flood: the oldest half goes.
                let mut at: Vec<_> = self.asked.values().map(|(_, t)| *t).collect();
                at.sort_unstable();
                let cut = at[at.len() / 2];
                self.asked.retain(|_, (_, t)| *t > cut);
            }
        }
        self.asked.insert(
            (session, port, resolver, id),
            (name.to_ascii_lowercase(), std::time::Instant::now()),
        );
    }

    /// Whether a response to `port` from `resolver` with this id and name answers a query
    /// the session sent (each query is answered once).
    pub fn answers(
        &mut self,
        session: u64,
        port: u16,
        resolver: IpAddr,
        id: u16,
        name: &str,
    ) -> bool {
        let key = (session, port, resolver, id);
        match self.asked.get(&key) {
            Some((n, at)) if at.elapsed() < ASKED_FOR && n.eq_ignore_ascii_case(name) => {
                self.asked.remove(&key);
                true
            }
            _ => false,
        }
    }

    /// The name `session` last resolved to `addr`.
    pub fn host(&self, session: u64, addr: IpAddr) -> Option<&str> {
        self.by_addr.get(&(session, addr)).map(|(h, _)| h.as_str())
    }

    pub fn learn(&mut self, session: u64, name: &str, addrs: &[IpAddr]) {
        if self.by_addr.len() + addrs.len() > NAMES_MAX {
            // Bounded: the older half goes (a session that resolved that much is a scan).
            let mut ticks: Vec<u64> = self.by_addr.values().map(|(_, t)| *t).collect();
            ticks.sort_unstable();
            let cut = ticks[ticks.len() / 2];
            self.by_addr.retain(|_, (_, t)| *t > cut);
        }
        for a in addrs {
            self.tick += 1;
            self.by_addr
                .insert((session, *a), (name.to_string(), self.tick));
        }
    }

    pub fn session_ended(&mut self, session: u64) {
        self.by_addr.retain(|(s, _), _| *s != session);
        self.asked.retain(|(s, ..), _| *s != session);
    }
}

/// A query's id and the name it asks for; None for a message that is no query.
pub fn query(message: &[u8]) -> Option<(u16, String)> {
    let packet = Packet::parse(message).ok()?;
    if packet.has_flags(simple_dns::PacketFlag::RESPONSE) {
        return None;
    }
    Some((packet.id(), packet.questions.first()?.qname.to_string()))
}

/// A DNS response as an event, its id, and the addresses it answered for the name asked;
/// None for a message that is no response or does not parse. The event says `unsolicited`
/// until the caller finds the query it answers.
pub fn parse(message: &[u8], truncated: bool) -> Option<(Detail, u16, Vec<IpAddr>)> {
    let packet = Packet::parse(message).ok()?;
    if !packet.has_flags(simple_dns::PacketFlag::RESPONSE) {
        return None;
    }
    let q = packet.questions.first()?;
    let query = q.qname.to_string();
    let qtype = match q.qtype {
        QTYPE::TYPE(t) => format!("{t:?}"),
        other => format!("{other:?}"),
    };
    let mut answers = Vec::new();
    let mut addrs = Vec::new();
    for rr in &packet.answers {
        match &rr.rdata {
            RData::A(a) => {
                let ip = IpAddr::from(std::net::Ipv4Addr::from(a.address));
                answers.push(ip.to_string());
                addrs.push(ip);
            }
            RData::AAAA(a) => {
                let ip = IpAddr::from(std::net::Ipv6Addr::from(a.address));
                answers.push(ip.to_string());
                addrs.push(ip);
            }
            RData::CNAME(c) => answers.push(c.0.to_string()),
            _ => {}
        }
    }
    let rcode = match format!("{:?}", packet.rcode()).as_str() {
        "NoError" => "NOERROR".to_string(),
        "NameError" => "NXDOMAIN".to_string(),
        "ServerFailure" => "SERVFAIL".to_string(),
        "Refused" => "REFUSED".to_string(),
        other => other.to_uppercase(),
    };
    Some((
        Detail::Dns {
            query,
            qtype,
            rcode,
            answers,
            truncated,
            unsolicited: true,
        },
        packet.id(),
        addrs,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response for `a.example` (A) with a CNAME to `b.example` and b's A record.
    fn response() -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0];
        m.extend_from_slice(b"\x01a\x07example\x00\x00\x01\x00\x01");
        m.extend_from_slice(&[0xc0, 0x0c, 0, 5, 0, 1, 0, 0, 0, 60, 0, 4]);
        m.extend_from_slice(b"\x01b\xc0\x0e");
        m.extend_from_slice(&[0xc0, 0x1d, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0, 0, 7]);
        m
    }

    #[test]
    fn an_answer_names_its_addresses_by_the_name_asked() {
        let (d, id, addrs) = parse(&response(), false).expect("a response");
        assert_eq!(id, 0x1234);
        assert_eq!(
            d,
            Detail::Dns {
                query: "a.example".into(),
                qtype: "A".into(),
                rcode: "NOERROR".into(),
                answers: vec!["b.example".into(), "10.0.0.7".into()],
                truncated: false,
                unsolicited: true,
            }
        );
        // Answered only for the query that asked: same session, port, resolver, id, name.
        let mut names = Names::default();
        let r: IpAddr = "127.0.0.53".parse().unwrap();
        assert!(!names.answers(1, 4000, r, 0x1234, "a.example"));
        names.asked(1, 4000, r, 0x1234, "A.example");
        assert!(!names.answers(1, 4001, r, 0x1234, "a.example"));
        assert!(!names.answers(1, 4000, "10.9.9.9".parse().unwrap(), 0x1234, "a.example"));
        assert!(!names.answers(1, 4000, r, 0x1235, "a.example"));
        assert!(!names.answers(1, 4000, r, 0x1234, "b.example"));
        assert!(names.answers(1, 4000, r, 0x1234, "a.example"));
        assert!(
            !names.answers(1, 4000, r, 0x1234, "a.example"),
            "answered twice"
        );
        let mut names = Names::default();
        names.learn(1, "a.example", &addrs);
        assert_eq!(
            names.host(1, "10.0.0.7".parse().unwrap()),
            Some("a.example")
        );
        assert_eq!(names.host(2, "10.0.0.7".parse().unwrap()), None);
        names.session_ended(1);
        assert_eq!(names.host(1, "10.0.0.7".parse().unwrap()), None);
    }

    #[test]
    fn garbage_on_port_53_is_no_event() {
        assert!(parse(b"", false).is_none());
        assert!(parse(&[0xff; 40], false).is_none());
        let cut = response();
        // Cut inside the answers: no event rather than a half-read one, and no panic.
        for n in 0..cut.len() {
            let _ = parse(&cut[..n], true);
        }
    }
}
