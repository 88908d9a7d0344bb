//! Both ends driven against each other, and hostile bytes.

use std::collections::VecDeque;

use super::*;
use crate::messages::{AuthRequest, Method};
use crate::msg;

const SID: &[u8] = b"session-id-0123456789";

pub(crate) fn key(alg: Algorithm) -> ClientKey {
    if let Algorithm::Rsa { .. } = alg {
        // Generating RSA keys takes seconds in a debug build: a fixed test key.
        let pem = include_str!("../../tests/data/rsa_test_key");
        return ClientKey::new(ssh_key::PrivateKey::from_openssh(pem).expect("test key"));
    }
    let key = ssh_key::PrivateKey::random(&mut rand::rng(), alg).expect("keygen");
    ClientKey::new(key)
}

/// Runs client against server; `decide` answers each question.
fn run(
    client: &mut ClientAuth,
    server: &mut ServerAuth,
    mut decide: impl FnMut(&Question) -> Decision,
) -> Result<(Vec<Question>, Vec<String>), AuthError> {
    let mut questions = Vec::new();
    let mut refused = Vec::new();
    let mut to_server = VecDeque::new();
    let mut to_client = VecDeque::from([vec![msg::SERVICE_ACCEPT]]);
    for _ in 0..100 {
        if let Some(m) = to_client.pop_front() {
            let step = client.receive(&m, SID)?;
            to_server.extend(step.send);
            if step.success {
                return Ok((questions, refused));
            }
        } else if let Some(m) = to_server.pop_front() {
            let mut step = server.receive(m, SID)?;
            loop {
                to_client.extend(std::mem::take(&mut step.send));
                if let Some((_, why)) = step.refused.take() {
                    refused.push(why);
                    step = server.decide(Decision::Reject, SID)?;
                    continue;
                }
                let Some(q) = step.question.take() else { break };
                let d = decide(&q);
                questions.push(q);
                step = server.decide(d, SID)?;
            }
        } else {
            break;
        }
    }
    Err(AuthError("stalled".into()))
}

fn all_methods() -> Vec<&'static str> {
    vec![
        method::PUBLICKEY,
        method::PASSWORD,
        method::KEYBOARD_INTERACTIVE,
    ]
}

#[test]
fn every_key_type_signs_and_verifies_and_a_wrong_key_is_refused() {
    for alg in [
        Algorithm::Ed25519,
        ecdsa(EcdsaCurve::NistP256),
        ecdsa(EcdsaCurve::NistP384),
        ecdsa(EcdsaCurve::NistP521),
    ] {
        let k = key(alg.clone());
        let mut client = ClientAuth::new("pi", vec![Credential::Key(Box::new(k))]);
        let mut server = ServerAuth::new(all_methods(), 6);
        let (qs, _) = run(&mut client, &mut server, |_| Decision::Accept).expect("login");
        assert!(
            matches!(&qs[..], [Question::Key { user, .. }] if user == "pi"),
            "{alg:?} {qs:?}"
        );
        assert_eq!(server.user(), Some("pi"));
    }
    // The application says no to one key; the second key gets in.
    let (a, b) = (key(Algorithm::Ed25519), key(Algorithm::Ed25519));
    let good = b.key.public_key().clone();
    let mut client = ClientAuth::new(
        "pi",
        vec![Credential::Key(Box::new(a)), Credential::Key(Box::new(b))],
    );
    let mut server = ServerAuth::new(all_methods(), 6);
    let (qs, refused) = run(&mut client, &mut server, |q| match q {
        Question::Key { key, .. } if key.key_data() == good.key_data() => Decision::Accept,
        _ => Decision::Reject,
    })
    .expect("second key");
    assert_eq!(qs.len(), 2);
    assert!(refused.is_empty());
}

#[test]
fn rsa_sha2_signs_and_sha1_or_a_mismatched_algorithm_is_refused() {
    let k = key(Algorithm::Rsa { hash: None });
    let blob = k.blob().expect("blob");
    let public = k.key.public_key().clone();
    let mut request = AuthRequest {
        user: "op".into(),
        service: CONNECTION_SERVICE.into(),
        method: Method::PublicKey {
            algorithm: "rsa-sha2-512".into(),
            key: blob.clone(),
            signature: None,
        },
    };
    let data = request.signed_data(SID).expect("data");
    let sig = k.sign(&data).expect("sign");
    assert_eq!(
        verify_signature("rsa-sha2-512", &public, &sig, &data),
        Ok(())
    );
    // The same signature claimed as rsa-sha2-256, or over other data, fails.
    assert!(verify_signature("rsa-sha2-256", &public, &sig, &data).is_err());
    assert!(verify_signature("rsa-sha2-512", &public, &sig, b"other").is_err());
    // `ssh-rsa` (SHA-1) is refused before any signature is looked at.
    let mut server = ServerAuth::new(all_methods(), 6);
    if let Method::PublicKey {
        algorithm,
        signature,
        ..
    } = &mut request.method
    {
        *algorithm = "ssh-rsa".into();
        *signature = Some(sig);
    }
    let step = server
        .receive(request.encode(), SID)
        .expect("refused, not an error");
    assert!(step.question.is_none());
    assert!(step.refused.expect("refused").1.contains("not accepted"));
    // The failure waits for the application, which paces it like its own refusals.
    assert!(step.send.is_empty());
    let step = server.decide(Decision::Accept, SID).expect("still refused");
    assert_eq!(
        step.send.first().and_then(|m| m.first()),
        Some(&msg::USERAUTH_FAILURE)
    );
}

#[test]
fn a_forged_signature_never_reaches_the_application() {
    let k = key(Algorithm::Ed25519);
    let request = AuthRequest {
        user: "pi".into(),
        service: CONNECTION_SERVICE.into(),
        method: Method::PublicKey {
            algorithm: "ssh-ed25519".into(),
            key: k.blob().expect("blob"),
            signature: Some(k.sign(b"a different session").expect("sign")),
        },
    };
    let mut server = ServerAuth::new(all_methods(), 6);
    let step = server.receive(request.encode(), SID).expect("refused");
    assert!(step.question.is_none());
    assert!(step.refused.expect("why").1.contains("does not verify"));
}

#[test]
fn key_query_then_password_then_keyboard_interactive() {
    // A query answered no, then the password typed wrong, then right via the prompt.
    let k = key(Algorithm::Ed25519);
    let mut client = ClientAuth::new(
        "op",
        vec![
            Credential::Key(Box::new(k)),
            Credential::Password(Zeroizing::new("wrong".into())),
            Credential::Password(Zeroizing::new("right".into())),
        ],
    );
    let mut server = ServerAuth::new(all_methods(), 6);
    let (qs, _) = run(&mut client, &mut server, |q| match q {
        Question::Password { password, .. } if password.as_str() == "right" => Decision::Accept,
        _ => Decision::Reject,
    })
    .expect("login");
    let methods: Vec<&str> = qs
        .iter()
        .map(|q| match q {
            Question::Password { method, .. } => method,
            _ => "key",
        })
        .collect();
    assert_eq!(methods, ["key", "password", "password"], "{qs:?}");

    // A server offering only keyboard-interactive gets the password through the prompt.
    let mut client = ClientAuth::new(
        "op",
        vec![Credential::Password(Zeroizing::new("pw".into()))],
    );
    let mut server = ServerAuth::new(vec![method::KEYBOARD_INTERACTIVE], 6);
    let (qs, _) = run(&mut client, &mut server, |q| match q {
        Question::Password {
            password, method, ..
        } => {
            assert_eq!(*method, method::KEYBOARD_INTERACTIVE);
            if password.as_str() == "pw" {
                Decision::Accept
            } else {
                Decision::Reject
            }
        }
        _ => Decision::Reject,
    })
    .expect("login");
    assert_eq!(qs.len(), 1);
}

#[test]
fn partial_success_narrows_the_methods_and_the_attempt_limit_ends_it() {
    let k = key(Algorithm::Ed25519);
    let mut client = ClientAuth::new(
        "op",
        vec![
            Credential::Key(Box::new(k)),
            Credential::Password(Zeroizing::new("pw".into())),
        ],
    );
    let mut server = ServerAuth::new(all_methods(), 6);
    let (qs, _) = run(&mut client, &mut server, |q| match q {
        Question::Key { .. } => Decision::Partial(vec![method::PASSWORD]),
        Question::Password { .. } => Decision::Accept,
        Question::KeyQuery { .. } => Decision::Reject,
    })
    .expect("two factors");
    assert_eq!(qs.len(), 2);

    let many = (0..10)
        .map(|i| Credential::Password(Zeroizing::new(format!("guess{i}"))))
        .collect();
    let mut client = ClientAuth::new("op", many);
    let mut server = ServerAuth::new(vec![method::PASSWORD], 3);
    let err = run(&mut client, &mut server, |_| Decision::Reject).expect_err("limit");
    assert!(err.0.contains("too many authentication failures"), "{err}");
}

#[test]
fn a_refusal_can_say_what_to_do_in_a_banner() {
    let mut client = ClientAuth::new(
        "pi",
        vec![Credential::Key(Box::new(key(Algorithm::Ed25519)))],
    );
    let mut server = ServerAuth::new(all_methods(), 6);
    let err = run(&mut client, &mut server, |_| {
        Decision::RejectSaying("this key is device cam's".into())
    })
    .expect_err("refused");
    assert!(err.0.contains("refused every credential"), "{err}");
    assert_eq!(
        client.take_banner().as_deref(),
        Some("this key is device cam's")
    );
}

#[test]
fn requests_that_arrive_while_a_question_is_out_wait_their_turn() {
    let mut server = ServerAuth::new(all_methods(), 6);
    let pw = |p: &str| {
        AuthRequest {
            user: "op".into(),
            service: CONNECTION_SERVICE.into(),
            method: Method::Password {
                password: p.into(),
                change: false,
            },
        }
        .encode()
    };
    let first = server.receive(pw("a"), SID).expect("first");
    assert!(first.question.is_some());
    let held = server.receive(pw("b"), SID).expect("held");
    assert_eq!(held, ServerStep::default());
    let next = server.decide(Decision::Reject, SID).expect("next");
    assert!(
        matches!(next.question, Some(Question::Password { ref password, .. }) if password.as_str() == "b")
    );
    assert!(server.decide(Decision::Reject, SID).is_ok());
    assert!(
        server.decide(Decision::Accept, SID).is_err(),
        "no question out"
    );
    // The wrong service ends it; so does an info response nobody asked for.
    let mut server = ServerAuth::new(all_methods(), 6);
    let mut bad = AuthRequest::decode(&pw("x")).expect("decodes");
    bad.service = "other".into();
    assert!(server.receive(bad.encode(), SID).is_err());
    let mut server = ServerAuth::new(all_methods(), 6);
    assert!(
        server
            .receive(
                vec![msg::USERAUTH_INFO_RESPONSE, 0, 0, 0, 1, 0, 0, 0, 0],
                SID
            )
            .is_err()
    );
}

#[test]
fn a_service_request_again_is_answered_in_turn() {
    // paramiko asks for `ssh-userauth` before every attempt; OpenSSH's sshd answers each.
    let service = |name: &str| {
        let mut w = crate::wire::Writer::message(msg::SERVICE_REQUEST);
        w.string(name.as_bytes());
        w.into_bytes()
    };
    let accept = service(USERAUTH_SERVICE)
        .iter()
        .enumerate()
        .map(|(i, b)| if i == 0 { msg::SERVICE_ACCEPT } else { *b })
        .collect::<Vec<u8>>();
    let password = AuthRequest {
        user: "op".into(),
        service: CONNECTION_SERVICE.into(),
        method: Method::Password {
            password: "guess".into(),
            change: false,
        },
    }
    .encode();
    let mut server = ServerAuth::new(all_methods(), 6);
    let step = server
        .receive(service(USERAUTH_SERVICE), SID)
        .expect("answered");
    assert_eq!(step.send, vec![accept.clone()]);
    // Asked while a password is being checked, it is answered after that password's failure.
    assert!(
        server
            .receive(password, SID)
            .expect("asked")
            .question
            .is_some()
    );
    let held = server
        .receive(service(USERAUTH_SERVICE), SID)
        .expect("held");
    assert_eq!(held, ServerStep::default());
    let step = server.decide(Decision::Reject, SID).expect("answered");
    assert_eq!(step.send.len(), 2);
    assert_eq!(step.send[0].first(), Some(&msg::USERAUTH_FAILURE));
    assert_eq!(step.send[1], accept);
    // Any other service is not offered.
    assert!(server.receive(service(CONNECTION_SERVICE), SID).is_err());
}

#[test]
fn hostile_auth_bytes_never_panic() {
    let mut seed = 99u64;
    let k = key(Algorithm::Ed25519);
    let good = AuthRequest {
        user: "pi".into(),
        service: CONNECTION_SERVICE.into(),
        method: Method::PublicKey {
            algorithm: "ssh-ed25519".into(),
            key: k.blob().expect("blob"),
            signature: Some(vec![0; 83]),
        },
    }
    .encode();
    for _ in 0..2000 {
        let mut bytes = good.clone();
        for _ in 0..(crate::xorshift(&mut seed) % 4 + 1) {
            let at = (crate::xorshift(&mut seed) as usize) % bytes.len();
            bytes[at] = crate::xorshift(&mut seed) as u8;
        }
        let cut = (crate::xorshift(&mut seed) as usize) % (bytes.len() + 1);
        let mut server = ServerAuth::new(all_methods(), 6);
        let _ = server.receive(bytes[..cut].to_vec(), SID);
        let mut client = ClientAuth::new("pi", vec![]);
        let _ = client.receive(&bytes[..cut], SID);
    }
}
