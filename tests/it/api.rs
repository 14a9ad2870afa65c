//! Every RPC through a generated tonic client, against the real binary
//! serving the sandbox store on its embedded defaults.

use std::time::Duration;

use iapd::pb::{self, AcknowledgementState as Ack, ConsumptionState as Consumption, PurchaseState as State, Verdict};
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::{Server, error_info, list_pages, token, unique, verify};

#[tokio::test]
async fn list_stores_describes_the_sandbox() {
    let server = Server::start(None, &[]);
    let answer = server.client().await.list_stores(pb::ListStoresRequest {}).await.unwrap().into_inner();
    assert_eq!(answer.stores.len(), 1);
    let store = &answer.stores[0];
    assert_eq!(store.id, "sandbox");
    assert_eq!(store.plugin_name, "sandbox");
    assert_eq!(store.abi_version, "1.1");
    assert_eq!(store.proof_kinds, ["purchase_token"]);
    let capabilities: Vec<pb::Capability> =
        store.capabilities.iter().map(|c| pb::Capability::try_from(*c).unwrap()).collect();
    assert_eq!(
        capabilities,
        [pb::Capability::Verify, pb::Capability::Acknowledge, pb::Capability::Consume, pb::Capability::ListItems]
    );
}

#[tokio::test]
async fn verify_gives_every_verdict() {
    let server = Server::start(None, &[]);
    let mut client = server.client().await;
    // (product, token, user, verdict, purchase state or None when no purchase)
    let cases: &[(&str, &str, &str, Verdict, Option<State>)] = &[
        ("coins_100", "purchased", "", Verdict::Valid, Some(State::Purchased)),
        ("coins_100", "pending", "", Verdict::Pending, Some(State::Pending)),
        ("coins_100", "canceled", "", Verdict::Canceled, Some(State::Canceled)),
        ("coins_100", "refunded", "", Verdict::Refunded, Some(State::Refunded)),
        ("coins_100", "notfound", "", Verdict::NotFound, None),
        ("no_such_product", "purchased", "", Verdict::NotFound, None),
        ("coins_100", "invalid", "", Verdict::Invalid, Some(State::Purchased)),
        ("vip_monthly", "expired", "", Verdict::Expired, Some(State::Purchased)),
        ("coins_100", "owned-by-alice", "alice", Verdict::Valid, Some(State::Purchased)),
        ("coins_100", "owned-by-alice", "mallory", Verdict::UserMismatch, Some(State::Purchased)),
        ("coins_100", "owned-by-alice", "", Verdict::Valid, Some(State::Purchased)),
    ];
    for &(product, purchase_token, user, verdict, state) in cases {
        let mut request = verify("sandbox", product, &unique(purchase_token));
        request.user_id = user.to_owned();
        let answer = client.verify(request).await.unwrap().into_inner();
        assert_eq!(answer.verdict(), verdict, "{product} {purchase_token} {user}: {}", answer.verdict_reason);
        assert!(!answer.verdict_reason.is_empty());
        match state {
            None => assert!(answer.purchase.is_none(), "{purchase_token}"),
            Some(state) => {
                let purchase = answer.purchase.expect("purchase");
                assert_eq!(purchase.state(), state, "{purchase_token}");
                assert_eq!(purchase.store, "sandbox");
                assert_eq!(purchase.product_id, product);
                assert_eq!(purchase.environment(), pb::Environment::Sandbox);
                assert!(purchase.order_id.starts_with("SANDBOX."));
                assert!(purchase.purchase_time.is_some());
                assert_eq!(purchase.quantity, 1);
                assert!(purchase.raw_store_response.contains("productId"));
            }
        }
    }
}

#[tokio::test]
async fn acknowledge_and_consume_change_state_as_a_store_does() {
    let server = Server::start(None, &[]);
    let mut client = server.client().await;
    let purchase_token = unique("purchased");
    let state = |answer: pb::VerifyResponse| {
        let purchase = answer.purchase.unwrap();
        (purchase.acknowledgement_state(), purchase.consumption_state())
    };
    let first = client.verify(verify("sandbox", "coins_100", &purchase_token)).await.unwrap().into_inner();
    assert_eq!(state(first), (Ack::NotAcknowledged, Consumption::NotConsumed));

    let acknowledge = pb::AcknowledgeRequest {
        store: "sandbox".into(),
        app_id: "com.example.game".into(),
        product_id: "coins_100".into(),
        proof: token(&purchase_token),
        developer_payload: String::new(),
    };
    let done = client.acknowledge(acknowledge.clone()).await.unwrap().into_inner();
    assert!(!done.already_acknowledged);
    let again = client.acknowledge(acknowledge.clone()).await.unwrap().into_inner();
    assert!(again.already_acknowledged, "acknowledging twice says it was already done");

    let consume = pb::ConsumeRequest {
        store: "sandbox".into(),
        app_id: "com.example.game".into(),
        product_id: "coins_100".into(),
        proof: token(&purchase_token),
    };
    assert!(!client.consume(consume.clone()).await.unwrap().into_inner().already_consumed);
    assert!(client.consume(consume).await.unwrap().into_inner().already_consumed, "consume twice");
    let after = client.verify(verify("sandbox", "coins_100", &purchase_token)).await.unwrap().into_inner();
    assert_eq!(state(after), (Ack::Acknowledged, Consumption::Consumed));

    let refused = client.acknowledge(acknowledge).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(error_info(&refused), Some(("PURCHASE_CONSUMED".into(), "sandbox".into())));
}

#[tokio::test]
async fn operations_on_purchases_that_cannot_change_name_the_store_reason() {
    let server = Server::start(None, &[]);
    let mut client = server.client().await;
    // (product, token, rpc, code, reason)
    let cases = [
        ("remove_ads", "purchased", "consume", Code::FailedPrecondition, "PRODUCT_NOT_CONSUMABLE"),
        ("coins_100", "pending", "acknowledge", Code::FailedPrecondition, "INVALID_PURCHASE_STATE"),
        ("coins_100", "refunded", "consume", Code::FailedPrecondition, "INVALID_PURCHASE_STATE"),
        ("coins_100", "notfound", "acknowledge", Code::NotFound, "PURCHASE_NOT_FOUND"),
        ("coins_100", "notfound", "consume", Code::NotFound, "PURCHASE_NOT_FOUND"),
    ];
    for (product, purchase_token, rpc, code, reason) in cases {
        let proof = token(&unique(purchase_token));
        let result = if rpc == "consume" {
            let request =
                pb::ConsumeRequest { store: "sandbox".into(), app_id: "a".into(), product_id: product.into(), proof };
            client.consume(request).await.map(|_| ())
        } else {
            let request = pb::AcknowledgeRequest {
                store: "sandbox".into(),
                app_id: "a".into(),
                product_id: product.into(),
                proof,
                developer_payload: String::new(),
            };
            client.acknowledge(request).await.map(|_| ())
        };
        let status = result.unwrap_err();
        assert_eq!(status.code(), code, "{rpc} {product} {purchase_token}: {}", status.message());
        assert_eq!(error_info(&status), Some((reason.into(), "sandbox".into())), "{rpc} {product} {purchase_token}");
    }
}

#[tokio::test]
async fn list_items_pages_and_filters() {
    let server = Server::start(None, &[]);
    let mut client = server.client().await;
    let list = |kind: pb::ProductKind, page_size: i32, page_token: String| pb::ListItemsRequest {
        store: "sandbox".into(),
        app_id: "com.example.game".into(),
        kind: kind.into(),
        page_size,
        page_token,
    };
    let pages = list_pages(&mut client, "sandbox", "com.example.game", 4).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [4, 2]);
    let all: Vec<pb::CatalogItem> = pages.into_iter().flatten().collect();
    let coins = all.iter().find(|item| item.product_id == "coins_100").unwrap();
    assert_eq!(coins.price.as_ref().map(|p| (p.currency_code.as_str(), p.amount_micros)), Some(("USD", 990_000)));
    for (kind, expected) in
        [(pb::ProductKind::Consumable, 2), (pb::ProductKind::NonConsumable, 2), (pb::ProductKind::Subscription, 2)]
    {
        let page = client.list_items(list(kind, 0, String::new())).await.unwrap().into_inner();
        assert_eq!(page.items.len(), expected, "{kind:?}");
        assert!(page.items.iter().all(|item| item.kind() == kind));
    }
}

/// (request, code, ErrorInfo reason, domain, retry delay, bad-request field)
type ErrorRow = (pb::VerifyRequest, Code, &'static str, &'static str, Option<Duration>, Option<&'static str>);

/// The documented error table: what a caller gets, by cause.
#[tokio::test]
async fn errors_carry_documented_codes_and_details() {
    let server = Server::start(None, &[]);
    let mut client = server.client().await;
    let long_token = "purchased-".to_owned() + &"x".repeat(5000);
    let cases: Vec<ErrorRow> = vec![
        (verify("nope", "coins_100", "purchased"), Code::NotFound, "UNKNOWN_STORE", "iapd", None, None),
        (verify("", "coins_100", "purchased"), Code::InvalidArgument, "INVALID_ARGUMENT", "iapd", None, Some("store")),
        (
            verify("sandbox", "", "purchased"),
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            "iapd",
            None,
            Some("product_id"),
        ),
        (
            pb::VerifyRequest { proof: None, ..verify("sandbox", "coins_100", "x") },
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            "iapd",
            None,
            Some("proof"),
        ),
        (
            verify("sandbox", "coins_100", &long_token),
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            "iapd",
            None,
            Some("proof.purchase_token"),
        ),
        (verify("sandbox", "coins_100", "gibberish"), Code::InvalidArgument, "UNKNOWN_TOKEN", "sandbox", None, None),
        (
            verify("sandbox", "coins_100", "error-unavailable"),
            Code::Unavailable,
            "BACKEND_ERROR",
            "sandbox",
            None,
            None,
        ),
        (
            verify("sandbox", "coins_100", "error-ratelimited"),
            Code::ResourceExhausted,
            "RATE_LIMITED",
            "sandbox",
            Some(Duration::from_secs(2)),
            None,
        ),
        (verify("sandbox", "coins_100", "error-internal"), Code::Internal, "INTERNAL_ERROR", "sandbox", None, None),
        (
            verify("sandbox", "coins_100", "error-denied"),
            Code::PermissionDenied,
            "PERMISSION_DENIED",
            "sandbox",
            None,
            None,
        ),
        (
            verify("sandbox", "coins_100", "error-unauthenticated"),
            Code::Unauthenticated,
            "INVALID_CREDENTIALS",
            "sandbox",
            None,
            None,
        ),
    ];
    for (request, code, reason, domain, retry, field) in cases {
        let label = format!("{request:?}").chars().take(120).collect::<String>();
        let status = client.verify(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{label}: {}", status.message());
        assert_eq!(error_info(&status), Some((reason.to_owned(), domain.to_owned())), "{label}");
        let details = status.get_error_details();
        match retry {
            Some(delay) => assert_eq!(details.retry_info().and_then(|info| info.retry_delay), Some(delay), "{label}"),
            None if code == Code::Unavailable => assert!(details.retry_info().is_some(), "unavailable is retryable"),
            None => {}
        }
        if let Some(field) = field {
            let violations = details.bad_request().expect("BadRequest details").field_violations.clone();
            assert_eq!(violations[0].field, field, "{label}");
            assert!(status.message().starts_with(field), "message names the field: {}", status.message());
        }
    }
    let unknown = client.verify(verify("nope", "coins_100", "purchased")).await.unwrap_err();
    assert!(unknown.message().contains("loaded stores: sandbox"), "{}", unknown.message());
}

#[tokio::test]
async fn a_slow_store_honours_the_client_deadline_and_the_server_keeps_serving() {
    let server = Server::start(None, &[]);
    let mut client = server.client().await;
    let mut request = tonic::Request::new(verify("sandbox", "coins_100", &unique("slow-5000")));
    request.set_timeout(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let status = client.verify(request).await.unwrap_err();
    crate::support::assert_deadline_ended(&status, started, Duration::from_millis(300));
    let answer = client.verify(verify("sandbox", "coins_100", &unique("slow-50"))).await.unwrap().into_inner();
    assert_eq!(answer.verdict(), Verdict::Valid);
}

#[tokio::test]
async fn the_server_default_deadline_applies_when_the_client_sets_none() {
    let server = Server::start(None, &[("IAPD_SERVER__DEFAULT_TIMEOUT_MS", "300")]);
    let mut client = server.client().await;
    let started = std::time::Instant::now();
    let status = client.verify(verify("sandbox", "coins_100", &unique("slow-5000"))).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{}", status.message());
    assert_eq!(error_info(&status), Some(("DEADLINE_EXCEEDED".into(), "iapd".into())));
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn responses_carry_a_request_id() {
    let server = Server::start(None, &[]);
    let mut client = server.client().await;
    let answer = client.list_stores(pb::ListStoresRequest {}).await.unwrap();
    assert!(answer.metadata().get("x-request-id").is_some());
    let mut request = tonic::Request::new(pb::ListStoresRequest {});
    request.metadata_mut().insert("x-request-id", "caller-chosen-id".parse().unwrap());
    let answer = client.list_stores(request).await.unwrap();
    assert_eq!(answer.metadata().get("x-request-id").unwrap(), "caller-chosen-id");
}

#[tokio::test]
async fn sigterm_drains_calls_in_flight_then_exits() {
    let server = Server::start(None, &[]);
    let mut client = server.client().await;
    let slow = tokio::spawn(async move { client.verify(verify("sandbox", "coins_100", &unique("slow-1500"))).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    server.terminate();
    let answer = slow.await.unwrap().expect("the call in flight completes").into_inner();
    assert_eq!(answer.verdict(), Verdict::Valid);
    let status = server.wait(Duration::from_secs(10));
    assert!(status.success(), "iapd exits cleanly after draining: {status:?}");
}

#[tokio::test]
async fn concurrent_verifies_all_succeed() {
    let server = Server::start(None, &[]);
    let client = server.client().await;
    let calls = (0..200).map(|index| {
        let mut client = client.clone();
        tokio::spawn(async move {
            let purchase_token = format!("slow-20-{index}");
            client
                .verify(verify("sandbox", "coins_100", &purchase_token))
                .await
                .map(|answer| answer.into_inner().verdict())
        })
    });
    for call in calls.collect::<Vec<_>>() {
        assert_eq!(call.await.unwrap().unwrap(), Verdict::Valid);
    }
}

#[tokio::test]
async fn load_beyond_the_limits_is_shed_with_resource_exhausted() {
    // (env, expected ErrorInfo): the server-wide limit sheds in the tower
    // stack; the per-store limit is the store's bulkhead.
    let cases = [
        (("IAPD_SERVER__MAX_CONCURRENT_REQUESTS", "2"), Some(("SERVER_OVERLOADED".to_owned(), "iapd".to_owned()))),
        (("IAPD_STORES__SANDBOX__MAX_IN_FLIGHT", "2"), Some(("STORE_OVERLOADED".to_owned(), "iapd".to_owned()))),
    ];
    for (env, expected_info) in cases {
        let server = Server::start(None, &[env]);
        let client = server.client().await;
        let calls: Vec<_> = (0..8)
            .map(|index| {
                let mut client = client.clone();
                tokio::spawn(async move {
                    client.verify(verify("sandbox", "coins_100", &format!("slow-700-{index}"))).await
                })
            })
            .collect();
        let mut shed = Vec::new();
        let mut served = 0;
        for call in calls {
            match call.await.unwrap() {
                Ok(_) => served += 1,
                Err(status) => shed.push(status),
            }
        }
        assert!(served >= 2, "{env:?}: the first calls are served ({served})");
        assert!(!shed.is_empty(), "{env:?}: calls beyond the limit are shed");
        for status in &shed {
            assert_eq!(status.code(), Code::ResourceExhausted, "{env:?}: {}", status.message());
            if let Some(info) = &expected_info {
                assert_eq!(error_info(status).as_ref(), Some(info));
                assert!(status.get_error_details().retry_info().is_some(), "retry after a delay");
            }
        }
        // Once the load is gone, calls are served again.
        let mut client = server.client().await;
        client.verify(verify("sandbox", "coins_100", &unique("purchased"))).await.unwrap();
    }
}

#[tokio::test]
async fn oversized_messages_are_refused_and_the_server_keeps_serving() {
    let server = Server::start(None, &[]);
    let mut client = server.client().await;
    let mut request = verify("sandbox", "coins_100", "purchased");
    // Over server.max_message_bytes (2 MiB by default).
    request.proof = Some(pb::PurchaseProof {
        proof: Some(pb::purchase_proof::Proof::Receipt("r".repeat(3 * 1024 * 1024))),
        store_parameters: Default::default(),
    });
    let status = client.verify(request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(error_info(&status), Some(("MESSAGE_TOO_LARGE".to_owned(), "iapd".to_owned())));
    // Within the message limit, over the receipt field's own bound (1 MiB).
    let mut request = verify("sandbox", "coins_100", "purchased");
    request.proof = Some(pb::PurchaseProof {
        proof: Some(pb::purchase_proof::Proof::Receipt("r".repeat(1024 * 1024 + 1))),
        store_parameters: Default::default(),
    });
    let status = client.verify(request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("proof.receipt: is 1048577 bytes, at most 1048576 allowed"),
        "{}",
        status.message()
    );
    let answer = client.verify(verify("sandbox", "coins_100", &unique("purchased"))).await.unwrap().into_inner();
    assert_eq!(answer.verdict(), Verdict::Valid);
}
