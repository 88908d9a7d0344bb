//! What the peer sends on the connection protocol (messages 80-127): each message checked
//! against the channel's state and window, then turned into events and answers.

use super::*;

impl Connection {
    /// Takes a connection protocol message (80-127).
    pub fn receive(&mut self, payload: impl Into<Bytes>) -> Result<(), ConnectionError> {
        let payload: Bytes = payload.into();
        let mut r = Reader::new(&payload);
        let number = r
            .u8("message number")
            .map_err(|e| malformed("message", e))?;
        match number {
            msg::GLOBAL_REQUEST => self.on_global_request(&mut r),
            msg::REQUEST_SUCCESS | msg::REQUEST_FAILURE => {
                let Some(expect) = self.global_expected.pop_front() else {
                    return fail("a global request reply with no request out");
                };
                match expect {
                    Expect::Keepalive => {}
                    Expect::Reply => {
                        let port = if number == msg::REQUEST_SUCCESS && r.remaining() >= 4 {
                            r.u32("bound port").ok()
                        } else {
                            None
                        };
                        self.events.push_back(Event::GlobalReply {
                            success: number == msg::REQUEST_SUCCESS,
                            port,
                        });
                    }
                    Expect::Proof(keys) => {
                        let answer = (number == msg::REQUEST_SUCCESS).then(|| payload.slice(1..));
                        self.events.push_back(Event::HostKeysProof { keys, answer });
                    }
                }
                Ok(())
            }
            msg::CHANNEL_OPEN => self.on_open(&mut r),
            msg::CHANNEL_OPEN_CONFIRMATION => self.on_confirmation(&mut r),
            msg::CHANNEL_OPEN_FAILURE => self.on_open_failure(&mut r),
            msg::CHANNEL_WINDOW_ADJUST => {
                let (id, n) = (|| Ok((r.u32("channel")?, r.u32("bytes to add")?)))()
                    .map_err(|e: WireError| malformed("WINDOW_ADJUST", e))?;
                let channel = ChannelId(id);
                let c = self.get(channel)?;
                c.send_window = c.send_window.checked_add(n).ok_or_else(|| {
                    ConnectionError(format!("{channel}: window grown past 2^32 - 1"))
                })?;
                self.events.push_back(Event::Writable(channel));
                Ok(())
            }
            msg::CHANNEL_DATA | msg::CHANNEL_EXTENDED_DATA => {
                let id = r.u32("channel").map_err(|e| malformed("CHANNEL_DATA", e))?;
                let code = if number == msg::CHANNEL_EXTENDED_DATA {
                    Some(
                        r.u32("data type")
                            .map_err(|e| malformed("EXTENDED_DATA", e))?,
                    )
                } else {
                    None
                };
                let len = r
                    .string(MAX_DATA, "data")
                    .map_err(|e| malformed("CHANNEL_DATA", e))?
                    .len();
                r.finish().map_err(|e| malformed("CHANNEL_DATA", e))?;
                self.on_data(ChannelId(id), code, payload.clone(), len)
            }
            msg::CHANNEL_EOF => {
                let channel = self.channel_of(&mut r, "CHANNEL_EOF")?;
                let c = self.get(channel)?;
                if c.state != State::Open {
                    return fail(format!("EOF on {channel}, which is not open"));
                }
                if !c.got_eof {
                    c.got_eof = true;
                    if !c.sent_close {
                        self.events.push_back(Event::Eof(channel));
                    }
                }
                Ok(())
            }
            msg::CHANNEL_CLOSE => {
                let channel = self.channel_of(&mut r, "CHANNEL_CLOSE")?;
                let c = self.get(channel)?;
                if c.state != State::Open || c.got_close {
                    return fail(format!("CLOSE on {channel}, which is not open"));
                }
                c.got_close = true;
                if !c.sent_close {
                    c.sent_close = true;
                    let mut w = Writer::message(msg::CHANNEL_CLOSE);
                    w.u32(c.remote);
                    self.queue(w.into_bytes());
                }
                self.maybe_free(channel);
                Ok(())
            }
            msg::CHANNEL_REQUEST => self.on_request(&mut r),
            msg::CHANNEL_SUCCESS | msg::CHANNEL_FAILURE => {
                let channel = self.channel_of(&mut r, "CHANNEL_SUCCESS")?;
                let c = self.get(channel)?;
                if c.expected == 0 {
                    return fail(format!("a reply on {channel} with no request out"));
                }
                c.expected = c.expected.saturating_sub(1);
                if !c.sent_close {
                    self.events.push_back(Event::RequestReply {
                        channel,
                        success: number == msg::CHANNEL_SUCCESS,
                    });
                }
                Ok(())
            }
            other => fail(format!(
                "message {other} is not part of the connection protocol"
            )),
        }
    }

    fn channel_of(&self, r: &mut Reader<'_>, what: &str) -> Result<ChannelId, ConnectionError> {
        let id = r.u32("recipient channel").map_err(|e| malformed(what, e))?;
        Ok(ChannelId(id))
    }

    fn on_global_request(&mut self, r: &mut Reader<'_>) -> Result<(), ConnectionError> {
        let mut peek = r.clone();
        if let (Ok(name), Ok(want_reply)) =
            (peek.utf8(MAX_NAME, "request name"), peek.bool("want reply"))
            && (name == crate::hostkeys::ANNOUNCE || name == crate::hostkeys::PROVE)
        {
            return self.on_host_keys(name == crate::hostkeys::PROVE, want_reply, &mut peek);
        }
        let parse = |r: &mut Reader<'_>| -> Result<(GlobalRequest, bool), WireError> {
            let name = r.utf8(MAX_NAME, "request name")?.to_string();
            let want_reply = r.bool("want reply")?;
            let request = match name.as_str() {
                "tcpip-forward" | "cancel-tcpip-forward" => {
                    let address = r.utf8(MAX_NAME, "address")?.to_string();
                    let port = r.u32("port")?;
                    r.finish()?;
                    if name == "tcpip-forward" {
                        GlobalRequest::TcpipForward { address, port }
                    } else {
                        GlobalRequest::CancelTcpipForward { address, port }
                    }
                }
                "keepalive@openssh.com" => GlobalRequest::Keepalive,
                // One string after the name: an application's request with data; anything
                // else (several fields, none) is known by its name alone.
                _ => {
                    let mut copy = r.clone();
                    match copy.string(MAX_DATA, "request data") {
                        Ok(data) if copy.finish().is_ok() => GlobalRequest::WithData {
                            name,
                            data: data.to_vec(),
                        },
                        _ => GlobalRequest::Other(name),
                    }
                }
            };
            Ok((request, want_reply))
        };
        let (request, want_reply) = parse(r).map_err(|e| malformed("GLOBAL_REQUEST", e))?;
        if want_reply && self.global_replies.len() >= MAX_OWED {
            return fail("too many global requests wait for a reply");
        }
        match request {
            // Answered here, as OpenSSH answers what it does not know: a failure is an answer.
            // It waits behind the answers still owed for earlier requests.
            GlobalRequest::Keepalive | GlobalRequest::Other(_) | GlobalRequest::WithData { .. } => {
                if want_reply {
                    self.global_replies
                        .push_back(Some(vec![msg::REQUEST_FAILURE]));
                    self.send_global_replies();
                }
                if !matches!(request, GlobalRequest::Keepalive) {
                    self.events.push_back(Event::Global {
                        request,
                        want_reply: false,
                    });
                }
            }
            request => {
                if want_reply {
                    self.global_replies.push_back(None);
                }
                self.events.push_back(Event::Global {
                    request,
                    want_reply,
                });
            }
        }
        Ok(())
    }

    /// A host key announcement (client) or proof request (server; answered here, in order
    /// with the other answers owed). A list that does not parse is refused, not fatal: the
    /// rotation is an extension the rest of the connection does not need.
    fn on_host_keys(
        &mut self,
        prove: bool,
        want_reply: bool,
        r: &mut Reader<'_>,
    ) -> Result<(), ConnectionError> {
        if want_reply && self.global_replies.len() >= MAX_OWED {
            return fail("too many global requests wait for a reply");
        }
        let keys = crate::hostkeys::parse_keys(r).ok();
        let reply = match (prove, &keys, &self.prover) {
            (true, Some(keys), Some(p)) => crate::hostkeys::answer(&p.keys, &p.session_id, keys),
            _ => vec![msg::REQUEST_FAILURE],
        };
        if want_reply {
            self.global_replies.push_back(Some(reply));
            self.send_global_replies();
        }
        if let (false, Some(keys)) = (prove, keys) {
            self.events.push_back(Event::HostKeys(keys));
        }
        Ok(())
    }

    fn on_open(&mut self, r: &mut Reader<'_>) -> Result<(), ConnectionError> {
        let parse = |r: &mut Reader<'_>| -> Result<(OpenKind, u32, u32, u32), WireError> {
            let name = r.utf8(MAX_NAME, "channel type")?.to_string();
            let sender = r.u32("sender channel")?;
            let window = r.u32("initial window size")?;
            let packet = r.u32("maximum packet size")?;
            let kind = OpenKind::decode(&name, r)?;
            r.finish()?;
            Ok((kind, sender, window, packet))
        };
        let (kind, sender, window, packet) = parse(r).map_err(|e| malformed("CHANNEL_OPEN", e))?;
        let Some(id) = self.free_id() else {
            self.queue(open_failure_message(
                sender,
                open_failure::RESOURCE_SHORTAGE,
                "too many channels open",
            ));
            return Ok(());
        };
        // Other types (x11, auth-agent) are refused here, as nothing above offers them; burrow's
        // own extension types (`NAME@burrow`, RFC 4250's local names) go to the application,
        // which accepts or refuses them.
        if let OpenKind::Other(name) = &kind
            && !name.ends_with(EXTENSION_SUFFIX)
        {
            let text = format!("channel type {name:?} is not offered");
            self.queue(open_failure_message(
                sender,
                open_failure::UNKNOWN_CHANNEL_TYPE,
                &text,
            ));
            return Ok(());
        }
        // Its window is granted when it is accepted.
        let mut c = Channel::new(State::Offered, 0);
        c.remote = sender;
        c.send_window = window;
        c.send_packet = packet.max(MIN_PEER_PACKET);
        self.channels.insert(id, c);
        self.events.push_back(Event::Open {
            channel: ChannelId(id),
            kind,
        });
        Ok(())
    }

    fn on_confirmation(&mut self, r: &mut Reader<'_>) -> Result<(), ConnectionError> {
        let parse = |r: &mut Reader<'_>| -> Result<(u32, u32, u32, u32), WireError> {
            let ours = r.u32("recipient channel")?;
            let theirs = r.u32("sender channel")?;
            let window = r.u32("initial window size")?;
            let packet = r.u32("maximum packet size")?;
            // Type-specific fields may follow; none are used.
            Ok((ours, theirs, window, packet))
        };
        let (ours, theirs, window, packet) =
            parse(r).map_err(|e| malformed("OPEN_CONFIRMATION", e))?;
        let channel = ChannelId(ours);
        let c = self.get(channel)?;
        if c.state != State::Opening {
            return fail(format!(
                "a confirmation for {channel}, which was not opening"
            ));
        }
        c.state = State::Open;
        c.remote = theirs;
        c.send_window = window;
        c.send_packet = packet.max(MIN_PEER_PACKET);
        if c.sent_close {
            // Closed while opening: close it now that it has a number on the other side.
            let mut w = Writer::message(msg::CHANNEL_CLOSE);
            w.u32(theirs);
            self.queue(w.into_bytes());
        } else {
            self.events.push_back(Event::Opened(channel));
        }
        Ok(())
    }

    fn on_open_failure(&mut self, r: &mut Reader<'_>) -> Result<(), ConnectionError> {
        let parse = |r: &mut Reader<'_>| -> Result<(u32, u32, String), WireError> {
            let ours = r.u32("recipient channel")?;
            let reason = r.u32("reason code")?;
            let text = String::from_utf8_lossy(r.string(MAX_COMMAND, "description")?).into_owned();
            let _language = r.string(MAX_NAME, "language tag")?;
            r.finish()?;
            Ok((ours, reason, text))
        };
        let (ours, reason, text) = parse(r).map_err(|e| malformed("OPEN_FAILURE", e))?;
        let channel = ChannelId(ours);
        let c = self.get(channel)?;
        if c.state != State::Opening {
            return fail(format!(
                "an open failure for {channel}, which was not opening"
            ));
        }
        let closed_meanwhile = c.sent_close;
        self.channels.remove(&ours);
        self.events.push_back(if closed_meanwhile {
            Event::Closed(channel)
        } else {
            Event::OpenFailed {
                channel,
                reason,
                text,
            }
        });
        Ok(())
    }

    fn on_data(
        &mut self,
        channel: ChannelId,
        code: Option<u32>,
        payload: Bytes,
        len: usize,
    ) -> Result<(), ConnectionError> {
        let c = self.get(channel)?;
        if c.state != State::Open {
            return fail(format!("data on {channel}, which is not open"));
        }
        if c.got_eof {
            return fail(format!("data on {channel} after its EOF"));
        }
        let n = u32::try_from(len).unwrap_or(u32::MAX);
        if n > c.recv_window {
            return fail(format!(
                "{channel}: {n} bytes sent into a window of {} (the peer ignores flow control)",
                c.recv_window
            ));
        }
        c.recv_window = c.recv_window.saturating_sub(n);
        if c.sent_close {
            // In flight when we closed: dropped, and there is no one to give the window to.
            return Ok(());
        }
        // The data is the tail of the payload: a view past the header, not a copy.
        let header = payload.len().saturating_sub(len);
        let payload = payload.slice(header..);
        self.events.push_back(match code {
            None => Event::Data {
                channel,
                data: payload,
            },
            Some(code) => Event::ExtendedData {
                channel,
                code,
                data: payload,
            },
        });
        Ok(())
    }

    fn on_request(&mut self, r: &mut Reader<'_>) -> Result<(), ConnectionError> {
        let parse = |r: &mut Reader<'_>| -> Result<(u32, Request, bool), WireError> {
            let id = r.u32("recipient channel")?;
            let name = r.utf8(MAX_NAME, "request type")?.to_string();
            let want_reply = r.bool("want reply")?;
            Ok((id, Request::decode(&name, r)?, want_reply))
        };
        let (id, request, want_reply) = parse(r).map_err(|e| malformed("CHANNEL_REQUEST", e))?;
        let channel = ChannelId(id);
        let c = self.get(channel)?;
        if c.state != State::Open {
            return fail(format!("a request on {channel}, which is not open"));
        }
        if want_reply && c.replies.len() >= MAX_OWED {
            return fail(format!("{channel}: too many requests wait for a reply"));
        }
        if c.sent_close {
            return Ok(());
        }
        // keepalive@openssh.com and PuTTY's winadj@ are answered here (with failure, which
        // is an answer, after those owed for earlier requests); other unknown requests go up
        // so the application can log them.
        if let Request::Other(name) = &request
            && (name == "keepalive@openssh.com" || name.starts_with("winadj@"))
        {
            if want_reply {
                c.replies.push_back(Some(false));
                self.send_replies(channel);
            }
            return Ok(());
        }
        if want_reply {
            c.replies.push_back(None);
        }
        self.events.push_back(Event::Request {
            channel,
            request,
            want_reply,
        });
        Ok(())
    }
}
