//! The Cafe Bazaar plugin loaded by the real `iapd` binary, talking HTTP to
//! the Cafe Bazaar emulator with the config of `tests/fixtures/cafe-bazaar`.

use std::sync::Arc;

use iapd::pb::{self, Verdict};
use iapd_emulators::cafe_bazaar::CafeBazaar;
use tonic::Code;

use crate::support::{Sandbox, Server, built_plugin, error_info, root, token};

#[tokio::test]
async fn verify_consume_and_catalog_through_iapd() {
    let emulator = Arc::new(CafeBazaar::with_default_state());
    let running = iapd_emulators::spawn(emulator.clone()).unwrap();
    let sandbox = Sandbox::new();
    let file = libloading::library_filename("iapd_plugin_cafe_bazaar");
    sandbox.add_plugin(&built_plugin("iapd-plugin-cafe-bazaar"), &file.to_string_lossy());
    let stores = std::fs::read_to_string(root().join("tests/fixtures/cafe-bazaar/iapd.toml"))
        .unwrap()
        .replace("127.0.0.1:8096", &running.address.to_string());
    let server = Server::start(Some(&sandbox.write_config(&stores)), &[]);
    let mut client = server.client().await;
    let request = |product: &str, purchase_token: &str| pb::VerifyRequest {
        store: "cafe-bazaar".into(),
        app_id: "com.example.game".into(),
        product_id: product.into(),
        proof: token(purchase_token),
        user_id: String::new(),
    };

    let answer = client.verify(request("coins_100", "bz-purchased")).await.unwrap().into_inner();
    assert_eq!(answer.verdict(), Verdict::Valid);
    let purchase = answer.purchase.unwrap();
    assert_eq!(purchase.consumption_state(), pb::ConsumptionState::NotConsumed, "bazaar's 1 is not consumed");
    assert_eq!(purchase.developer_payload, "order-1");
    let faked = client.verify(request("coins_100", "made-up")).await.unwrap().into_inner();
    assert_eq!(faked.verdict(), Verdict::NotFound);
    let refunded = client.verify(request("coins_100", "bz-refunded")).await.unwrap().into_inner();
    assert_eq!(refunded.verdict(), Verdict::Refunded);

    let consume = pb::ConsumeRequest {
        store: "cafe-bazaar".into(),
        app_id: "com.example.game".into(),
        product_id: "coins_100".into(),
        proof: token("bz-purchased"),
    };
    assert!(!client.consume(consume.clone()).await.unwrap().into_inner().already_consumed);
    assert!(client.consume(consume).await.unwrap().into_inner().already_consumed);
    assert_eq!(emulator.purchase("bz-purchased").unwrap().consumption_state, 0);

    let status = client
        .acknowledge(pb::AcknowledgeRequest {
            store: "cafe-bazaar".into(),
            app_id: "com.example.game".into(),
            product_id: "remove_ads".into(),
            proof: token("bz-remove-ads"),
            developer_payload: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "bazaar has no acknowledge: {status:?}");
    assert_eq!(error_info(&status).unwrap().0, "OPERATION_NOT_SUPPORTED");

    let items = client
        .list_items(pb::ListItemsRequest {
            store: "cafe-bazaar".into(),
            app_id: "com.example.game".into(),
            kind: pb::ProductKind::Consumable.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(items.len(), 1);
    assert_eq!(
        (items[0].product_id.as_str(), items[0].price.as_ref().unwrap().currency_code.as_str()),
        ("coins_100", "IRR")
    );
    assert_eq!(emulator.count("token"), 1, "one access token for every call");

    let mut other = request("coins_100", "bz-purchased");
    other.app_id = "com.other.app".into();
    let status = client.verify(other).await.unwrap_err();
    assert_eq!(error_info(&status), Some(("PACKAGE_NOT_ALLOWED".into(), "cafe-bazaar".into())));
}
