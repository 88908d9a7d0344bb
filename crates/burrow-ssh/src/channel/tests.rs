//! Tests of the connection protocol: two connections driven against each other in memory.

use super::*;

/// Delivers everything each side sends to the other until both are quiet.
fn pump(a: &mut Connection, b: &mut Connection) -> Result<(), ConnectionError> {
    loop {
        let mut moved = false;
        while let Some(m) = a.poll_transmit() {
            b.receive(m)?;
            moved = true;
        }
        while let Some(m) = b.poll_transmit() {
            a.receive(m)?;
            moved = true;
        }
        if !moved {
            return Ok(());
        }
    }
}

fn events(c: &mut Connection) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

fn small() -> Limits {
    Limits {
        window: 3000,
        max_packet: 1100,
        ..Limits::default()
    }
}

fn open_pair() -> (Connection, Connection, ChannelId, ChannelId) {
    open_pair_with(small())
}

/// Two connections with `limits` and one `direct-tcpip` channel open between them.
fn open_pair_with(limits: Limits) -> (Connection, Connection, ChannelId, ChannelId) {
    let (mut a, mut b) = (Connection::new(limits), Connection::new(limits));
    let kind = OpenKind::DirectTcpip {
        host: "pi".into(),
        port: 22,
        originator: "127.0.0.1".into(),
        originator_port: 5000,
    };
    let ours = a.open(&kind).expect("open");
    pump(&mut a, &mut b).expect("open");
    let theirs = match events(&mut b).as_slice() {
        [Event::Open { channel, kind: k }] if *k == kind => *channel,
        other => panic!("{other:?}"),
    };
    b.accept(theirs).expect("accept");
    pump(&mut a, &mut b).expect("confirm");
    assert_eq!(events(&mut a), vec![Event::Opened(ours)]);
    (a, b, ours, theirs)
}

fn data_of(events: &[Event]) -> Vec<u8> {
    events
        .iter()
        .flat_map(|e| match e {
            Event::Data { data, .. } => data.to_vec(),
            _ => Vec::new(),
        })
        .collect()
}

#[test]
fn the_window_closes_until_the_reader_consumes_and_reopens_after() {
    let (mut a, mut b, ours, theirs) = open_pair();
    let payload: Vec<u8> = (0..15000u32).map(|i| i as u8).collect();
    // Only the window's worth goes, in packets whose data is no larger than the peer's
    // maximum (a CHANNEL_DATA's own fields take 9 bytes before it).
    let taken = a.send(ours, &payload).expect("send");
    assert_eq!(taken, 3000);
    assert_eq!(a.send(ours, &payload[taken..]).expect("full"), 0);
    let mut packets = Vec::new();
    while let Some(m) = a.poll_transmit() {
        assert!(m.len() <= 9 + 1100, "packet of {}", m.len());
        packets.push(m);
    }
    assert_eq!(packets.first().map(Vec::len), Some(9 + 1100));
    for m in packets {
        b.receive(m).expect("data");
    }
    let got = data_of(&events(&mut b));
    assert_eq!(got, payload[..3000]);
    assert_eq!(b.receive_window(theirs), Some(0));
    // Consuming less than half gives nothing back; half reopens the window.
    b.consume(theirs, 1400).expect("consume");
    assert!(b.poll_transmit().is_none());
    b.consume(theirs, 100).expect("consume");
    pump(&mut a, &mut b).expect("adjust");
    assert_eq!(events(&mut a), vec![Event::Writable(ours)]);
    assert_eq!(a.send_room(ours), 1500);
    // Giving back more than arrived is the application's bug, caught.
    assert!(b.consume(theirs, 10_000).is_err());
}

#[test]
fn a_peer_that_ignores_the_window_is_refused() {
    let (mut a, mut b, _ours, theirs) = open_pair();
    let _ = a;
    let mut w = Writer::message(msg::CHANNEL_DATA);
    w.u32(theirs.0).string(&[0u8; 3001]);
    // The peer's number for its side is `ours`; here `a` speaks to `b`, whose channel is
    // `theirs`: forge data past the 3000-byte window.
    let err = b.receive(w.into_bytes()).expect_err("over the window");
    assert!(err.0.contains("flow control"), "{err}");
    a = Connection::new(small());
    assert!(
        a.receive(vec![msg::CHANNEL_DATA, 0, 0, 0, 9, 0, 0, 0, 1, 7])
            .is_err()
    );
}

#[test]
fn half_close_each_way_then_close() {
    let (mut a, mut b, ours, theirs) = open_pair();
    a.send(ours, b"request").expect("send");
    a.eof(ours).expect("eof");
    pump(&mut a, &mut b).expect("pump");
    let ev = events(&mut b);
    assert_eq!(data_of(&ev), b"request");
    assert_eq!(ev.last(), Some(&Event::Eof(theirs)));
    // The other direction still flows after a's EOF.
    b.send(theirs, b"answer").expect("answer");
    b.eof(theirs).expect("eof");
    pump(&mut a, &mut b).expect("pump");
    let ev = events(&mut a);
    assert_eq!(data_of(&ev), b"answer");
    assert_eq!(ev.last(), Some(&Event::Eof(ours)));
    // Data after our own EOF is refused locally; after the peer's, it breaks the protocol.
    assert!(a.send(ours, b"late").is_err());
    b.close(theirs).expect("close");
    pump(&mut a, &mut b).expect("pump");
    assert_eq!(events(&mut a), vec![Event::Closed(ours)]);
    assert_eq!(events(&mut b), vec![Event::Closed(theirs)]);
    assert_eq!((a.channel_count(), b.channel_count()), (0, 0));
    // Another close on a freed number is a protocol error.
    let mut w = Writer::message(msg::CHANNEL_CLOSE);
    w.u32(ours.0);
    assert!(a.receive(w.into_bytes()).is_err());
}

#[test]
fn requests_are_answered_in_order_and_break_carries_its_length() {
    let (mut a, mut b, ours, theirs) = open_pair();
    a.request(ours, &Request::Break { ms: 750 }, true)
        .expect("break");
    a.request(ours, &Request::Other("keepalive@openssh.com".into()), true)
        .expect("keepalive");
    a.request(
        ours,
        &Request::WindowChange(TermSize {
            cols: 132,
            rows: 43,
            ..TermSize::default()
        }),
        false,
    )
    .expect("resize");
    pump(&mut a, &mut b).expect("pump");
    assert_eq!(
        events(&mut b),
        vec![
            Event::Request {
                channel: theirs,
                request: Request::Break { ms: 750 },
                want_reply: true
            },
            Event::Request {
                channel: theirs,
                request: Request::WindowChange(TermSize {
                    cols: 132,
                    rows: 43,
                    ..TermSize::default()
                }),
                want_reply: false
            },
        ]
    );
    // The keepalive is answered here (failure), but not before the break the application
    // still has to answer: replies go in the order the requests came (RFC 4254 §5.4).
    assert!(
        b.poll_transmit().is_none(),
        "nothing leaves before the break's answer"
    );
    b.reply(theirs, true).expect("reply");
    assert!(b.reply(theirs, true).is_err(), "only one reply was owed");
    pump(&mut a, &mut b).expect("pump");
    assert_eq!(
        events(&mut a),
        vec![
            Event::RequestReply {
                channel: ours,
                success: true
            },
            Event::RequestReply {
                channel: ours,
                success: false
            },
        ]
    );
}

/// A device's `tcpip-forward` and a keepalive sent in one write: OpenSSH matches global replies
/// to requests in order, so the keepalive's answer must not overtake the forward's.
#[test]
fn global_replies_leave_in_the_order_the_requests_came() {
    let (mut a, mut b) = (Connection::new(small()), Connection::new(small()));
    a.global_request(
        &GlobalRequest::TcpipForward {
            address: "localhost".into(),
            port: 22,
        },
        true,
    );
    a.global_request(&GlobalRequest::Keepalive, true);
    a.global_request(
        &GlobalRequest::Other("no-more-sessions@openssh.com".into()),
        true,
    );
    while let Some(m) = a.poll_transmit() {
        b.receive(m).expect("request");
    }
    assert!(
        b.poll_transmit().is_none(),
        "the forward's answer goes first"
    );
    b.global_reply(true, None).expect("reply");
    let answers: Vec<u8> = std::iter::from_fn(|| b.poll_transmit())
        .map(|m| m[0])
        .collect();
    assert_eq!(
        answers,
        vec![
            msg::REQUEST_SUCCESS,
            msg::REQUEST_FAILURE,
            msg::REQUEST_FAILURE
        ]
    );
}

#[test]
fn global_requests_forward_with_port_zero_and_keepalives_are_answered_here() {
    let (mut a, mut b) = (Connection::new(small()), Connection::new(small()));
    a.global_request(&GlobalRequest::Keepalive, true);
    a.global_request(
        &GlobalRequest::TcpipForward {
            address: "localhost".into(),
            port: 0,
        },
        true,
    );
    assert!(a.keepalive_outstanding());
    pump(&mut a, &mut b).expect("pump");
    assert_eq!(
        events(&mut b),
        vec![Event::Global {
            request: GlobalRequest::TcpipForward {
                address: "localhost".into(),
                port: 0
            },
            want_reply: true
        }]
    );
    b.global_reply(true, Some(40123)).expect("reply");
    pump(&mut a, &mut b).expect("pump");
    assert!(!a.keepalive_outstanding());
    assert_eq!(
        events(&mut a),
        vec![Event::GlobalReply {
            success: true,
            port: Some(40123)
        }]
    );
    assert!(
        a.receive(vec![msg::REQUEST_SUCCESS]).is_err(),
        "nothing was asked"
    );
}

#[test]
fn refused_and_unknown_opens_and_a_close_while_opening() {
    let (mut a, mut b) = (Connection::new(small()), Connection::new(small()));
    let x = a.open(&OpenKind::Other("x11".into())).expect("open");
    let s = a.open(&OpenKind::Session).expect("open");
    pump(&mut a, &mut b).expect("pump");
    let offered = match events(&mut b).as_slice() {
        [
            Event::Open {
                channel,
                kind: OpenKind::Session,
            },
        ] => *channel,
        other => panic!("{other:?}"),
    };
    b.reject(offered, open_failure::PROHIBITED, "no shells here")
        .expect("reject");
    pump(&mut a, &mut b).expect("pump");
    let ev = events(&mut a);
    assert!(
        matches!(&ev[0], Event::OpenFailed { channel, reason: 3, .. } if *channel == x),
        "{ev:?}"
    );
    assert!(
        matches!(&ev[1], Event::OpenFailed { channel, reason: 1, text } if *channel == s && text == "no shells here"),
        "{ev:?}"
    );
    // Closed before the answer came: the channel closes once it is confirmed.
    let c = a.open(&OpenKind::Session).expect("open");
    a.close(c).expect("close early");
    pump(&mut a, &mut b).expect("pump");
    let offered = match events(&mut b).as_slice() {
        [Event::Open { channel, .. }] => *channel,
        other => panic!("{other:?}"),
    };
    b.accept(offered).expect("accept");
    pump(&mut a, &mut b).expect("pump");
    assert_eq!(events(&mut a), vec![Event::Closed(c)]);
    assert_eq!(events(&mut b), vec![Event::Closed(offered)]);
    assert_eq!((a.channel_count(), b.channel_count()), (0, 0));
    // burrow's own channel types reach the application.
    let p = a
        .open(&OpenKind::Other("portlog@burrow".into()))
        .expect("open");
    pump(&mut a, &mut b).expect("pump");
    let offered = match events(&mut b).as_slice() {
        [
            Event::Open {
                channel,
                kind: OpenKind::Other(name),
            },
        ] if name == "portlog@burrow" => *channel,
        other => panic!("{other:?}"),
    };
    b.accept(offered).expect("accept");
    pump(&mut a, &mut b).expect("pump");
    assert!(matches!(events(&mut a).as_slice(), [Event::Opened(c)] if *c == p));
}

#[test]
fn hostile_connection_messages_never_panic() {
    let (mut a, mut b, ours, _) = open_pair();
    a.send(ours, b"hello").expect("send");
    a.request(
        ours,
        &Request::PtyReq {
            term: "xterm".into(),
            size: TermSize::default(),
            modes: vec![0],
        },
        true,
    )
    .expect("pty");
    a.global_request(
        &GlobalRequest::TcpipForward {
            address: "a".into(),
            port: 1,
        },
        true,
    );
    let samples: Vec<Vec<u8>> = std::iter::from_fn(|| a.poll_transmit()).collect();
    let _ = &mut b;
    let mut seed = 7u64;
    for _ in 0..5000 {
        let (_, mut b, _, _) = open_pair();
        let pick = (crate::xorshift(&mut seed) as usize) % samples.len();
        let mut bytes = samples[pick].clone();
        for _ in 0..(crate::xorshift(&mut seed) % 3 + 1) {
            let at = (crate::xorshift(&mut seed) as usize) % bytes.len();
            bytes[at] = crate::xorshift(&mut seed) as u8;
        }
        let cut = (crate::xorshift(&mut seed) as usize) % (bytes.len() + 1);
        bytes.truncate(cut.max(1));
        let _ = b.receive(bytes);
    }
}

mod consume_steps {
    use super::*;

    /// The window goes back every three packets taken (OpenSSH's step), not every half
    /// window: a long upload's receiver stays audible and its sender never waits long.
    #[test]
    fn default_limits_adjust_every_three_packets() {
        let (mut a, mut b) = (
            Connection::new(Limits::default()),
            Connection::new(Limits::default()),
        );
        let id = a.open(&OpenKind::Session).unwrap();
        while let Some(m) = a.poll_transmit() {
            b.receive(m).unwrap();
        }
        let Some(Event::Open { channel, .. }) = b.poll_event() else {
            panic!()
        };
        b.accept(channel).unwrap();
        while let Some(m) = b.poll_transmit() {
            a.receive(m).unwrap();
        }
        let data = vec![0u8; 1 << 20];
        assert_eq!(a.send(id, &data).unwrap(), 1 << 20);
        while let Some(m) = a.poll_transmit() {
            b.receive(m).unwrap();
        }
        let mut adjusts = 0;
        for _ in 0..32 {
            b.consume(channel, 32 * 1024).unwrap();
            while let Some(m) = b.poll_transmit() {
                assert_eq!(m[0], msg::CHANNEL_WINDOW_ADJUST);
                adjusts += 1;
            }
        }
        assert_eq!(adjusts, 10);
    }
}

/// A peer that advertises a maximum packet of 1 byte would turn every byte into a packet; it
/// gets packets of [`MIN_PEER_PACKET`] instead (which RFC 4253 §6.1 obliges it to take).
#[test]
fn a_tiny_maximum_packet_is_raised_to_the_floor() {
    let mut b = Connection::new(Limits::default());
    let mut w = Writer::message(msg::CHANNEL_OPEN);
    w.string(b"session").u32(7).u32(1 << 20).u32(1);
    b.receive(w.into_bytes()).expect("open");
    let id = match events(&mut b).as_slice() {
        [Event::Open { channel, .. }] => *channel,
        other => panic!("{other:?}"),
    };
    b.accept(id).expect("accept");
    while b.poll_transmit().is_some() {}
    let taken = b.send(id, &[7u8; 10_000]).expect("send");
    assert_eq!(taken, 10_000);
    let sizes: Vec<usize> = std::iter::from_fn(|| b.poll_transmit())
        .map(|m| m.len())
        .collect();
    assert!(
        sizes.len() <= 10,
        "{} packets for 10,000 bytes",
        sizes.len()
    );
    assert!(
        sizes.iter().all(|n| *n <= 9 + MIN_PEER_PACKET as usize),
        "{sizes:?}"
    );
}

/// An agent's health report rides as a global request with one string, wanting no answer:
/// the peer gets the string, and sends nothing back.
#[test]
fn a_global_request_with_data_arrives_whole_and_wants_no_answer() {
    let (mut a, mut b) = (Connection::new(small()), Connection::new(small()));
    let report = br#"{"modem":{"mm":"absent"}}"#.to_vec();
    a.global_request(
        &GlobalRequest::WithData {
            name: "health@burrow".into(),
            data: report.clone(),
        },
        false,
    );
    // A request with two fields after its name is known by name only.
    let mut w = Writer::message(msg::GLOBAL_REQUEST);
    w.string(b"two-fields@example.com")
        .bool(false)
        .string(b"field one")
        .string(b"field two");
    b.receive(w.into_bytes()).expect("two fields");
    // OpenSSH's host key announcement is read as the list of keys it is.
    let mut w = Writer::message(msg::GLOBAL_REQUEST);
    w.string(b"hostkeys-00@openssh.com")
        .bool(false)
        .string(b"key one")
        .string(b"key two");
    b.receive(w.into_bytes()).expect("host keys");
    while let Some(m) = a.poll_transmit() {
        b.receive(m).expect("request");
    }
    assert_eq!(
        events(&mut b),
        vec![
            Event::Global {
                request: GlobalRequest::Other("two-fields@example.com".into()),
                want_reply: false
            },
            Event::HostKeys(vec![b"key one".to_vec(), b"key two".to_vec()]),
            Event::Global {
                request: GlobalRequest::WithData {
                    name: "health@burrow".into(),
                    data: report
                },
                want_reply: false
            }
        ]
    );
    assert!(b.poll_transmit().is_none(), "no answer was asked for");
}

/// A window adjustment the peer does not need yet (it can still send half a window) waits for
/// the driver's next turn instead of waking it; one it needs, or any message after it, does not.
#[test]
fn window_adjustments_wake_the_driver_only_when_the_peer_needs_them() {
    let limits = Limits {
        window: 30_000,
        max_packet: 1_000,
        ..Limits::default()
    };
    let (mut a, mut b, ours, theirs) = open_pair_with(limits);
    let deliver = |a: &mut Connection, b: &mut Connection, n: usize| {
        assert_eq!(a.send(ours, &vec![1u8; n]).expect("send"), n);
        while let Some(m) = a.poll_transmit() {
            b.receive(m).expect("data");
        }
        let _ = events(b);
    };
    // Three packets consumed with 27,000 of 30,000 still open to the peer: queued, no wake.
    deliver(&mut a, &mut b, 3_000);
    b.consume(theirs, 3_000).expect("consume");
    assert!(!b.has_output());
    let adjust = b.poll_transmit().expect("the adjustment is still sent");
    assert_eq!(adjust.first(), Some(&msg::CHANNEL_WINDOW_ADJUST));
    a.receive(adjust).expect("adjust");
    // 18,000 in flight leaves the peer 12,000, under half: the next one wakes the driver.
    deliver(&mut a, &mut b, 18_000);
    b.consume(theirs, 3_000).expect("consume");
    assert!(b.has_output());
    while b.poll_transmit().is_some() {}
    // Back at half (15,000 open): lazy again. Anything queued after it takes it along.
    b.consume(theirs, 3_000).expect("consume");
    assert!(!b.has_output());
    b.close(theirs).expect("close");
    assert!(b.has_output());
    let kinds: Vec<u8> = std::iter::from_fn(|| b.poll_transmit())
        .filter_map(|m| m.first().copied())
        .collect();
    assert_eq!(kinds, vec![msg::CHANNEL_WINDOW_ADJUST, msg::CHANNEL_CLOSE]);
}
