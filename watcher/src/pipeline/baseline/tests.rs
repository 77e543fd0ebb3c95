use super::*;
use crate::model::event::Event;

fn ev(v: serde_json::Value) -> Event {
    let mut base = serde_json::json!({
        "ts": "2026-01-01T00:00:00Z", "pid": 10, "tid": 10, "ppid": 1, "uid": 0,
        "trace_id": "t", "comm": "x", "cgroup_id": 0,
    });
    base.as_object_mut()
        .unwrap()
        .extend(v.as_object().unwrap().clone());
    serde_json::from_value(base).unwrap()
}

fn open(path: &str, flags: &[&str]) -> Event {
    ev(serde_json::json!({"type": "open", "path": path, "flags": flags, "mode": 0, "result": 3}))
}

fn connect(addr: &str, port: u16) -> Event {
    ev(
        serde_json::json!({"type": "connect", "family": "inet", "addr": addr, "port": port, "result": 0}),
    )
}

fn unlink(path: &str) -> Event {
    ev(
        serde_json::json!({"type": "unlink", "syscall": "unlinkat", "path": path, "dir": false, "result": 0}),
    )
}

struct Fixture {
    b: Baselines,
    d: Detector,
    tree: Tree,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            b: Baselines::open(&Config::load(None).unwrap(), None).unwrap(),
            d: Detector::default(),
            tree: Tree::default(),
        }
    }

    fn see(&mut self, session: u64, ts_ns: u64, e: &Event) -> Vec<Found> {
        let cx = Ctx {
            session_id: session,
            trace_id: "t",
            profile: "p",
            workdir: Some("/w"),
            tree: &self.tree,
            ts_ns,
        };
        self.d.observe(&self.b, e, &cx)
    }

    /// One learning session of `events`.
    fn learn(&mut self, session: u64, events: &[Event]) {
        for (i, e) in events.iter().enumerate() {
            assert!(
                self.see(session, i as u64, e).is_empty(),
                "learn mode finds nothing"
            );
        }
        self.d
            .session_ended(&self.b, session, &format!("s{session}"), "p");
    }
}

fn normal() -> Vec<Event> {
    vec![
        open("/w/src/main.rs", &["O_RDONLY"]),
        open("/w/target/x.o", &["O_WRONLY", "O_CREAT"]),
        open("/usr/lib/libc.so.6", &["O_RDONLY"]),
        connect("10.1.2.3", 443),
        unlink("/w/target/x.o"),
    ]
}

#[test]
fn enforce_flags_what_learning_never_saw_once_and_passes_what_it_saw() {
    let mut f = Fixture::new();
    f.learn(1, &normal());
    f.learn(2, &normal());
    assert_eq!(f.b.get("p").sessions, 2);
    f.b.set_mode("p", ProfileMode::Enforce).unwrap();
    for e in normal() {
        assert!(f.see(3, 0, &e).is_empty(), "{e:?}");
    }
    // Another file in a known area is no news.
    assert!(f
        .see(3, 0, &open("/w/src/other.rs", &["O_RDONLY"]))
        .is_empty());
    let found = f.see(3, 0, &connect("192.0.2.7", 4444));
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].rule, "baseline-new-destination");
    assert_eq!(found[0].level, Level::Hold);
    assert_eq!(found[0].anomaly.value, "192.0.2.0/24:4444");
    assert_eq!(
        found[0].anomaly.instead,
        vec!["10.1.2.0/24:443".to_string()]
    );
    // Asked once per session.
    assert!(f.see(3, 0, &connect("192.0.2.7", 4444)).is_empty());
    // A new write area in a home is a hold; a new system read area only an alert.
    let w = f.see(3, 0, &open("/home/u/.bashrc", &["O_WRONLY", "O_APPEND"]));
    assert_eq!(
        (w[0].rule, w[0].level),
        ("baseline-new-write-area", Level::Hold)
    );
    let r = f.see(3, 0, &open("/etc/hosts", &["O_RDONLY"]));
    assert_eq!(r[0].level, Level::Alert);
    f.d.session_ended(&f.b, 3, "s3", "p");
    let (profile, novel) = f.b.diff("s3").unwrap();
    assert_eq!(profile, "p");
    assert!(novel.iter().any(|n| n.value == "192.0.2.0/24:4444"));
    // Enforce does not learn.
    assert_eq!(f.b.get("p").sessions, 2);
}

#[test]
fn a_new_read_then_a_new_destination_is_the_sequence() {
    let mut f = Fixture::new();
    f.learn(1, &normal());
    f.b.set_mode("p", ProfileMode::Enforce).unwrap();
    let read = f.see(2, 1_000, &open("/root/.ssh/id_rsa", &["O_RDONLY"]));
    assert_eq!(read[0].rule, "baseline-new-read-area");
    let sent = f.see(2, 2_000, &connect("127.0.0.1", 9));
    let seq = sent
        .iter()
        .find(|x| x.rule == "baseline-read-then-send")
        .expect("the sequence");
    assert!(seq.score > 0.9);
    assert_eq!(seq.before.len(), 1, "the read is its evidence");
    // Out of the window it is a new destination only.
    let mut f2 = Fixture::new();
    f2.learn(1, &normal());
    f2.b.set_mode("p", ProfileMode::Enforce).unwrap();
    f2.see(2, 0, &open("/root/.ssh/id_rsa", &["O_RDONLY"]));
    let late = f2.see(2, SEQUENCE_NS + 1, &connect("127.0.0.1", 9));
    assert!(late.iter().all(|x| x.rule != "baseline-read-then-send"));
}

#[test]
fn a_burst_far_above_the_learned_rate_is_one_finding_per_minute() {
    let mut f = Fixture::new();
    f.learn(1, &normal());
    f.b.set_mode("p", ProfileMode::Enforce).unwrap();
    let floor = RateKind::DeleteOutside.floor();
    let mut rates = 0;
    for i in 0..floor * 2 {
        let found = f.see(2, i * 1000, &unlink(&format!("/srv/data/f{i}")));
        rates += found.iter().filter(|x| x.rule == "baseline-rate").count();
    }
    assert_eq!(rates, 1);
    // The next minute counts anew.
    let mut later = 0;
    for i in 0..floor + 1 {
        let found = f.see(2, 61_000_000_000 + i, &unlink(&format!("/srv/data/g{i}")));
        later += found.iter().filter(|x| x.rule == "baseline-rate").count();
    }
    assert_eq!(later, 1);
}

#[test]
fn shadow_records_what_enforce_would_hold_and_learns_nothing() {
    let mut f = Fixture::new();
    f.learn(1, &normal());
    f.b.set_mode("p", ProfileMode::Shadow).unwrap();
    let found = f.see(2, 0, &connect("192.0.2.7", 4444));
    assert_eq!(found[0].mode, ProfileMode::Shadow);
    assert_eq!(f.b.summary(&f.b.get("p")).would_hold, 1);
    f.d.session_ended(&f.b, 2, "s2", "p");
    assert_eq!(f.b.get("p").sessions, 1);
    assert!(f
        .b
        .get("p")
        .knows(Facet::Destination, "192.0.2.0/24:4444")
        .is_none());
}

#[test]
fn a_mode_switch_reaches_running_sessions() {
    let mut f = Fixture::new();
    f.learn(1, &normal());
    assert!(
        f.see(2, 0, &connect("192.0.2.7", 1)).is_empty(),
        "still learning"
    );
    f.b.set_mode("p", ProfileMode::Enforce).unwrap();
    assert_eq!(f.see(2, 0, &connect("192.0.2.8", 2)).len(), 1);
}
