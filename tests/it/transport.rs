//! The server's connections and call contract under hostile or careless
//! clients, through a raw HTTP/2 client (the `h2` crate) where a gRPC client
//! would not misbehave: streams that never send a body, mass cancels, bytes
//! that are not a message, odd request ids, idle and half-open connections,
//! the shutdown grace.

use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use iapd::pb::{self, Verdict};
use prost::Message;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::{Server, error_info, unique, verify};

/// A raw HTTP/2 connection to the server.
async fn raw_connection(server: &Server) -> SendRequest<Bytes> {
    let tcp = TcpStream::connect(server.address).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client.ready().await.unwrap()
}

fn grpc_request(path: &str, headers: &[(&str, &[u8])]) -> http::Request<()> {
    let mut request = http::Request::post(format!("http://iapd{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_bytes(value).unwrap(),
        );
    }
    request
}

/// A gRPC frame: the uncompressed flag, the length, the message.
fn frame(message: &[u8]) -> Bytes {
    let mut framed = vec![0];
    framed.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    framed.extend_from_slice(message);
    framed.into()
}

/// The status of a raw call: from the trailers, or from a trailers-only
/// answer's headers.
async fn raw_call(
    client: &mut SendRequest<Bytes>,
    path: &str,
    headers: &[(&str, &[u8])],
    message: &[u8],
) -> tonic::Status {
    let mut client = client.clone().ready().await.unwrap();
    let (response, mut body) = client.send_request(grpc_request(path, headers), false).unwrap();
    body.send_data(frame(message), true).unwrap();
    let response = response.await.unwrap();
    let (parts, mut body) = response.into_parts();
    if let Some(status) = tonic::Status::from_header_map(&parts.headers) {
        return status;
    }
    while let Some(data) = body.data().await {
        let data = data.unwrap();
        let _ = body.flow_control().release_capacity(data.len());
    }
    let trailers = body.trailers().await.unwrap().expect("trailers");
    tonic::Status::from_header_map(&trailers).expect("grpc-status in the trailers")
}

const VERIFY: &str = "/iapd.v1.PurchaseService/Verify";
const HEALTH: &str = "/grpc.health.v1.Health/Check";

#[tokio::test]
async fn streams_that_never_send_a_body_hold_nothing_of_other_callers() {
    // 4,200 header-only streams on one connection used to fill the server's
    // limit, so everyone else was shed for as long as they were held.
    let server = Server::start(
        None,
        &[("IAPD_SERVER__MAX_CONCURRENT_REQUESTS", "64"), ("IAPD_SERVER__DEFAULT_TIMEOUT_MS", "1500")],
    );
    let mut attacker = raw_connection(&server).await;
    let probe = tonic_health::pb::HealthCheckRequest { service: String::new() }.encode_to_vec();
    assert_eq!(raw_call(&mut attacker, HEALTH, &[], &probe).await.code(), Code::Ok, "settings exchanged");
    assert_eq!(attacker.current_max_send_streams(), 128, "a connection's share of streams is bounded");
    let opened = tokio::spawn(async move {
        let mut held = Vec::new();
        for _ in 0..4_200 {
            let Ok(mut client) = attacker.clone().ready().await else { break };
            let Ok((response, body)) = client.send_request(grpc_request(VERIFY, &[]), false) else { break };
            held.push((response, body));
            if held.len() == 128 {
                break;
            }
        }
        held
    });
    let mut held = tokio::time::timeout(Duration::from_secs(10), opened).await.expect("streams open").unwrap();
    assert_eq!(held.len(), 128);

    let mut client = server.client().await;
    for index in 0..100 {
        let answer = client.verify(verify("sandbox", "coins_100", &unique(&format!("purchased-{index}")))).await;
        assert_eq!(answer.expect("served while the streams are held").into_inner().verdict(), Verdict::Valid);
    }

    // The held streams time out at the deadline, which started with the call.
    let (response, _body) = held.pop().unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), response).await.expect("an answer").unwrap();
    let status = tonic::Status::from_header_map(response.headers()).expect("a trailers-only answer");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(error_info(&status), Some(("DEADLINE_EXCEEDED".to_owned(), "iapd".to_owned())));
}

#[tokio::test]
async fn probes_and_reflection_are_never_shed_and_shedding_carries_details() {
    let server = Server::start(None, &[("IAPD_SERVER__MAX_CONCURRENT_REQUESTS", "2")]);
    let client = server.client().await;
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { client.verify(verify("sandbox", "coins_100", &unique("slow-2000"))).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let status = client.clone().verify(verify("sandbox", "coins_100", &unique("purchased"))).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(error_info(&status), Some(("SERVER_OVERLOADED".to_owned(), "iapd".to_owned())));
    assert!(status.message().contains("server.max_concurrent_requests"), "{}", status.message());
    assert!(status.get_error_details().retry_info().is_some(), "shedding says when to retry");

    let channel = tonic::transport::Channel::from_shared(server.url()).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for _ in 0..20 {
        let answer = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await;
        assert_eq!(answer.expect("health is never shed").into_inner().status, 1, "SERVING");
    }
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut answers =
        reflection.server_reflection_info(tokio_stream::iter([request])).await.expect("reflection").into_inner();
    assert!(answers.message().await.expect("reflection answers").is_some());
    for call in slow {
        call.await.unwrap().expect("the admitted calls finish");
    }
}

#[tokio::test]
async fn a_slow_store_fills_its_own_bulkhead_before_the_server_limit() {
    // The embedded defaults: the sandbox's max_in_flight (2048) binds before
    // server.max_concurrent_requests (8192), so the other stores and probes
    // keep their room when one store is slow.
    let server = Server::start(None, &[]);
    let mut channels = Vec::new();
    for _ in 0..20 {
        channels.push(tonic::transport::Channel::from_shared(server.url()).unwrap().connect().await.unwrap());
    }
    let calls: Vec<_> = (0..2_100)
        .map(|index| {
            let mut client = pb::purchase_service_client::PurchaseServiceClient::new(channels[index % 20].clone());
            tokio::spawn(async move { client.verify(verify("sandbox", "coins_100", &unique("slow-6000"))).await })
        })
        .collect();
    let (mut served, mut store_shed) = (0, 0);
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => served += 1,
            Err(status) => {
                assert_eq!(
                    error_info(&status),
                    Some(("STORE_OVERLOADED".to_owned(), "iapd".to_owned())),
                    "only the store's bulkhead sheds: {status:?}"
                );
                store_shed += 1;
            }
        }
    }
    assert_eq!(served, 2048, "the store's limit");
    assert_eq!(store_shed, 52);
}

#[tokio::test]
async fn cancelling_many_calls_on_one_connection_fails_none_of_the_others() {
    // A client that gives up on 12,000 calls (a batch abandoned) resets them
    // on its one connection in bursts as fast as it can write; HTTP/2's
    // rapid-reset protection (server.max_pending_resets) must not take them
    // for an attack and close the connection under the 64 calls beside them.
    let server = Server::start(None, &[]);
    let tcp = TcpStream::connect(server.address).await.unwrap();
    let (client, mut connection) = h2::client::handshake(tcp).await.unwrap();
    let mut ping = connection.ping_pong().expect("ping handle");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let client = client.ready().await.unwrap();
    let slow: Vec<_> = (0..64)
        .map(|index| {
            let mut client = client.clone();
            let message = verify("sandbox", "coins_100", &unique(&format!("slow-3000-{index}"))).encode_to_vec();
            tokio::spawn(async move { raw_call(&mut client, VERIFY, &[], &message).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let request = verify("sandbox", "coins_100", "slow-3000").encode_to_vec();
    for _burst in 0..24 {
        for _ in 0..500 {
            let mut client = client.clone().ready().await.expect("the connection stays open");
            let (_response, mut body) = client.send_request(grpc_request(VERIFY, &[]), false).unwrap();
            body.send_data(frame(&request), false).unwrap();
            body.send_reset(h2::Reason::CANCEL);
        }
        // The burst is on the wire and read once the server answers a PING.
        ping.ping(h2::Ping::opaque()).await.expect("the connection answers pings");
    }
    for call in slow {
        let status = call.await.unwrap();
        assert_eq!(status.code(), Code::Ok, "a call beside the cancelled ones: {status:?}");
    }
}

#[tokio::test]
async fn bytes_that_are_not_a_request_are_invalid_argument_naming_the_field() {
    let server = Server::start(None, &[]);
    let mut client = raw_connection(&server).await;
    // (bytes, field named by BadRequest). VerifyRequest: store = 1,
    // proof = 4; PurchaseProof: purchase_token = 1, in the oneof `proof`.
    let cases: [(&[u8], Option<&str>); 6] = [
        (&[0x0a, 0x02, 0xff, 0xfe], Some("store")),
        // prost names the oneof (`proof`), not its member.
        (&[0x22, 0x04, 0x0a, 0x02, 0xc3, 0x28], Some("proof.proof")),
        (&[0x0a, 0x05, b's'], Some("store")),
        (&[0x0f], None),
        (&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], None),
        (&[0x0a], Some("store")),
    ];
    for (message, field) in cases {
        let status = raw_call(&mut client, VERIFY, &[], message).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{message:?}: {status:?}");
        assert_eq!(error_info(&status), Some(("MALFORMED_REQUEST".to_owned(), "iapd".to_owned())), "{message:?}");
        let named = status
            .get_error_details()
            .bad_request()
            .and_then(|bad| bad.field_violations.first().map(|violation| violation.field.clone()));
        assert_eq!(named.as_deref(), field, "{message:?}: {}", status.message());
    }
    // A path the API does not serve.
    let status = raw_call(&mut client, "/iapd.v1.PurchaseService/Nope", &[], &[]).await;
    assert_eq!(status.code(), Code::Unimplemented);
    assert_eq!(error_info(&status), Some(("UNKNOWN_METHOD".to_owned(), "iapd".to_owned())));
    assert!(!server.logs().contains("ERROR"), "a caller's mistake is not a server error:\n{}", server.logs());
}

#[tokio::test]
async fn request_ids_are_bounded_printable_and_never_logged_raw() {
    let server = Server::start(None, &[]);
    let mut client = raw_connection(&server).await;
    let message = verify("sandbox", "coins_100", &unique("purchased")).encode_to_vec();
    let long = "x".repeat(8 * 1024);
    let refused: [&[u8]; 4] = [long.as_bytes(), "id\u{202e}cba".as_bytes(), "id\u{2028}next".as_bytes(), b"with space"];
    for id in refused {
        let status = raw_call(&mut client, VERIFY, &[("x-request-id", id)], &message).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{:?}", String::from_utf8_lossy(id));
        let field = status.get_error_details().bad_request().map(|bad| bad.field_violations[0].field.clone());
        assert_eq!(field.as_deref(), Some("x-request-id"));
    }
    let status = raw_call(&mut client, VERIFY, &[("x-request-id", b"order-7f3a/2")], &message).await;
    assert_eq!(status.code(), Code::Ok, "{status:?}");
    // A failed call's log line carries the caller's id.
    let unknown_store = pb::VerifyRequest { store: "nope".into(), ..verify("sandbox", "coins_100", "purchased") };
    let status =
        raw_call(&mut client, VERIFY, &[("x-request-id", b"order-7f3a/3")], &unknown_store.encode_to_vec()).await;
    assert_eq!(status.code(), Code::NotFound);
    assert!(server.wait_for_log("order-7f3a/3"), "a valid id is in the logs");
    assert!(!server.logs().contains(&long[..200]), "an over-long id is never logged");
}

#[tokio::test]
async fn idle_and_half_open_connections_are_closed_and_busy_ones_kept() {
    let server = Server::start(None, &[("IAPD_SERVER__IDLE_TIMEOUT_MS", "300")]);
    // Half-open: TCP only, never a byte of HTTP/2.
    let mut half_open: Vec<_> = Vec::new();
    for _ in 0..20 {
        half_open.push(TcpStream::connect(server.address).await.unwrap());
    }
    // Idle: a complete HTTP/2 handshake and no call.
    let mut idle = Vec::new();
    for _ in 0..20 {
        let tcp = TcpStream::connect(server.address).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        idle.push((client, tokio::spawn(connection)));
    }
    // Busy: one call that lasts longer than the idle timeout.
    let mut busy = server.client().await;
    let answer = busy.verify(verify("sandbox", "coins_100", &unique("slow-1200"))).await;
    assert_eq!(answer.expect("a call outlives the idle timeout").into_inner().verdict(), Verdict::Valid);

    for mut stream in half_open {
        let mut buffer = [0u8; 1024];
        let closed = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {} // the server's SETTINGS
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a half-open connection is closed");
    }
    for (_client, connection) in idle {
        let ended = tokio::time::timeout(Duration::from_secs(20), connection).await;
        assert!(ended.is_ok(), "an idle connection is closed");
    }
}

#[tokio::test]
async fn a_call_still_running_when_the_grace_ends_gets_a_status_with_details() {
    let server = Server::start(None, &[("IAPD_SERVER__SHUTDOWN_GRACE_MS", "400")]);
    let mut client = server.client().await;
    let slow = tokio::spawn(async move { client.verify(verify("sandbox", "coins_100", &unique("slow-8000"))).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.terminate();
    let status = slow.await.unwrap().expect_err("the grace is shorter than the call");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(error_info(&status), Some(("SHUTTING_DOWN".to_owned(), "iapd".to_owned())));
    let exit = server.wait(Duration::from_secs(10));
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test]
async fn health_checks_go_through_the_raw_client_too() {
    // The raw client's framing, checked once against a known answer.
    let server = Server::start(None, &[]);
    let mut client = raw_connection(&server).await;
    let request = tonic_health::pb::HealthCheckRequest { service: String::new() }.encode_to_vec();
    assert_eq!(raw_call(&mut client, HEALTH, &[], &request).await.code(), Code::Ok);
}
