//! The gRPC service: validates requests, routes them to store plugins, and
//! assembles the server (tower stack, health, reflection, graceful shutdown).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iapd_sdk_plugin::abi;
use iapd_sdk_plugin::proto as plugin;
use prost::Message;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use crate::acknowledger;
use crate::auth::Caller;
use crate::config::Config;
use crate::error::ApiError;
use crate::host::{PluginHost, StorePlugin};
use crate::ledger::{self, Ledger};
use crate::pb::purchase_service_server::{PurchaseService, PurchaseServiceServer};
use crate::{ServeError, convert, layers, pb, transport, validate};

/// The PurchaseService implementation.
#[derive(Debug, Clone)]
pub struct PurchaseApi {
    host: Arc<PluginHost>,
    ledger: Option<Ledger>,
    default_timeout: Duration,
}

impl PurchaseApi {
    /// A service over started stores, recording into `ledger` if given.
    pub fn new(host: Arc<PluginHost>, ledger: Option<Ledger>, config: &Config) -> Self {
        PurchaseApi { host, ledger, default_timeout: config.default_timeout }
    }

    /// The hash the ledger knows a proof by; none without a ledger. Taken
    /// before the proof moves into the plugin's request, so it is never copied.
    fn proof_hash(&self, proof: Option<&pb::PurchaseProof>) -> Option<ledger::ProofHash> {
        self.ledger.as_ref().map(|_| ledger::ProofHash::of(proof.unwrap_or(&pb::PurchaseProof::default())))
    }

    fn ledger(&self, operation: &'static str) -> Result<&Ledger, ApiError> {
        self.ledger.as_ref().ok_or(ApiError::LedgerDisabled { operation })
    }

    /// Runs a ledger operation within the call's deadline.
    async fn within<T>(
        &self,
        deadline: Instant,
        operation: impl std::future::Future<Output = Result<T, ledger::LedgerError>>,
    ) -> Result<T, ApiError> {
        match tokio::time::timeout_at(deadline.into(), operation).await {
            Err(_) => Err(ApiError::CallDeadlineExceeded),
            Ok(Err(ledger::LedgerError::Refused(refusal))) => Err(ApiError::GrantRefused(refusal)),
            Ok(Err(err)) => Err(ApiError::LedgerUnavailable { detail: err.to_string() }),
            Ok(Ok(value)) => Ok(value),
        }
    }

    /// Records what the store confirmed, when the ledger is on; a purchase
    /// never verified through iapd is not in the ledger and stays out.
    async fn record_store_action(
        &self,
        store: &str,
        app_id: &str,
        proof_hash: Option<&ledger::ProofHash>,
        action: ledger::StoreAction,
        deadline: Instant,
    ) -> Result<(), ApiError> {
        let (Some(ledger), Some(proof_hash)) = (&self.ledger, proof_hash) else { return Ok(()) };
        self.within(deadline, ledger.record_store_action(store, app_id, proof_hash, action)).await.map(|_| ())
    }

    /// The answer for a purchase the ledger holds in a final state (refunded,
    /// canceled, consumed), answered for by the store within the freshness
    /// window: nothing the store says can change it, so it is not asked.
    /// The ledger's claims still apply.
    async fn answer_from_ledger(
        &self,
        request: &pb::VerifyRequest,
        proof_hash: Option<&ledger::ProofHash>,
        deadline: Instant,
    ) -> Result<Option<pb::VerifyResponse>, ApiError> {
        let (Some(ledger), Some(proof_hash)) = (&self.ledger, proof_hash) else { return Ok(None) };
        let freshness = ledger.final_state_freshness();
        if freshness.is_zero() {
            return Ok(None);
        }
        let since = ledger::now_ms().saturating_sub(i64::try_from(freshness.as_millis()).unwrap_or(i64::MAX));
        let found = ledger.final_answer(&request.store, &request.app_id, &request.product_id, proof_hash, since);
        let Some(found) = self.within(deadline, found).await? else { return Ok(None) };
        let age_s = (ledger::now_ms() - found.store_checked_ms) / 1000;
        let what =
            if found.consumed { "consumed".to_owned() } else { found.verdict.to_lowercase().replace("verdict_", "") };
        // The store's own last description, as iapd saw it change since; a
        // purchase recorded before the ledger kept one is asked again.
        let Some(purchase) = found.purchase else { return Ok(None) };
        let mut answer = pb::VerifyResponse {
            verdict: pb::Verdict::from_str_name(&found.verdict).unwrap_or_default().into(),
            verdict_reason: format!(
                "answered from iapd's ledger: the purchase is {what}, and the store answered for it {age_s} s ago"
            ),
            purchase: Some(purchase),
            ledger: None,
            source: pb::AnswerSource::Ledger.into(),
            store_checked_time: convert::timestamp(found.store_checked_ms),
        };
        self.record(request, Some(proof_hash), None, &mut answer, deadline, false).await?;
        Ok(Some(answer))
    }

    /// Records a Verify's decision in the ledger before it is answered; a
    /// purchase another user owns becomes VERDICT_CLAIMED_BY_OTHER_USER.
    async fn record(
        &self,
        request: &pb::VerifyRequest,
        proof_hash: Option<&ledger::ProofHash>,
        proof: Option<&pb::PurchaseProof>,
        answer: &mut pb::VerifyResponse,
        deadline: Instant,
        from_store: bool,
    ) -> Result<(), ApiError> {
        let (Some(ledger), Some(proof_hash)) = (&self.ledger, proof_hash) else { return Ok(()) };
        let observation = ledger::Observation {
            store: &request.store,
            app_id: &request.app_id,
            product_id: &request.product_id,
            proof_hash,
            user_id: &request.user_id,
            verdict: answer.verdict(),
            purchase: answer.purchase.as_ref(),
            from_store,
            proof,
        };
        let recorded = self.within(deadline, ledger.record(&observation)).await?;
        if recorded.claim == ledger::Claim::ClaimedByOther {
            answer.set_verdict(pb::Verdict::ClaimedByOtherUser);
            answer.verdict_reason = "the store says this purchase is real, but another user owns it in iapd's ledger \
                                     (a replayed proof); do not grant it to this user"
                .to_owned();
        }
        answer.ledger = Some(convert::ledger_entry(&recorded));
        Ok(())
    }

    /// The store a request names and the caller may use, and the app too;
    /// a store or app the caller may not use is refused the same whether it
    /// exists or not, and an unknown store's error lists only what the caller
    /// may use.
    fn store(&self, caller: &Caller, id: &str, app_id: &str) -> Result<&Arc<StorePlugin>, ApiError> {
        validate::store(id)?;
        validate::app_id(app_id)?;
        caller.check(Some(id), app_id)?;
        self.host.store(id).ok_or_else(|| ApiError::UnknownStore {
            store: id.to_owned(),
            known: self.host.store_ids().into_iter().filter(|store| caller.may_use_store(store)).collect(),
        })
    }

    /// The call's deadline, fixed by the call layer when the call started;
    /// the default from now when the service runs without it.
    fn deadline<T>(&self, request: &Request<T>) -> Instant {
        request
            .extensions()
            .get::<layers::CallDeadline>()
            .map_or_else(|| Instant::now() + self.default_timeout, |deadline| deadline.0)
    }

    /// Calls a plugin method and decodes its answer.
    async fn call<Answer: Message + Default>(
        &self,
        store: &StorePlugin,
        capability: (u64, &'static str),
        method: &'static str,
        request: impl Message,
        deadline: Instant,
    ) -> Result<Answer, ApiError> {
        let (bit, operation) = capability;
        if !store.supports(bit) {
            return Err(ApiError::Unsupported { store: store.id().to_owned(), operation });
        }
        let payload = store
            .call(method, request.encode_to_vec(), deadline)
            .await
            .map_err(|error| ApiError::Plugin { store: store.id().to_owned(), error })?;
        Answer::decode(payload.as_slice())
            .map_err(|err| ApiError::MalformedAnswer { store: store.id().to_owned(), detail: err.to_string() })
    }
}

/// The RPCs' bodies, each metered by the trait's method of the same name
/// below.
impl PurchaseApi {
    async fn verify_rpc(&self, request: Request<pb::VerifyRequest>) -> Result<Response<pb::VerifyResponse>, Status> {
        let deadline = self.deadline(&request);
        let caller = Caller::of(&request)?;
        let mut request = request.into_inner();
        let store = self.store(&caller, &request.store, &request.app_id)?;
        validate::app_and_product(&request.app_id, &request.product_id)?;
        validate::proof(request.proof.as_ref())?;
        validate::user_id(&request.user_id)?;
        let origin =
            convert::Origin { store: &request.store, app_id: &request.app_id, product_id: &request.product_id };
        let proof_hash = self.proof_hash(request.proof.as_ref());
        if let Some(answer) = self.answer_from_ledger(&request, proof_hash.as_ref(), deadline).await? {
            return Ok(Response::new(answer));
        }
        // Kept only where iapd acknowledges the app's purchases itself.
        let kept_proof = match &self.ledger {
            Some(ledger) if ledger.acknowledges(&request.app_id) => request.proof.clone(),
            _ => None,
        };
        let plugin_request = plugin::VerifyRequest {
            app_id: request.app_id.clone(),
            product_id: request.product_id.clone(),
            proof: request.proof.take().map(convert::proof),
            user_id: request.user_id.clone(),
        };
        let answer: plugin::VerifyResponse =
            self.call(store, (abi::CAP_VERIFY, "Verify"), abi::method::VERIFY, plugin_request, deadline).await?;
        let mut answer = convert::verify_response(answer, &origin);
        answer.set_source(pb::AnswerSource::Store);
        answer.store_checked_time = convert::timestamp(ledger::now_ms());
        self.record(&request, proof_hash.as_ref(), kept_proof.as_ref(), &mut answer, deadline, true).await?;
        Ok(Response::new(answer))
    }

    async fn acknowledge_rpc(
        &self,
        request: Request<pb::AcknowledgeRequest>,
    ) -> Result<Response<pb::AcknowledgeResponse>, Status> {
        let deadline = self.deadline(&request);
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let store = self.store(&caller, &request.store, &request.app_id)?;
        validate::app_and_product(&request.app_id, &request.product_id)?;
        validate::proof(request.proof.as_ref())?;
        validate::developer_payload(&request.developer_payload)?;
        let proof_hash = self.proof_hash(request.proof.as_ref());
        let plugin_request = plugin::AcknowledgeRequest {
            app_id: request.app_id.clone(),
            product_id: request.product_id,
            proof: request.proof.map(convert::proof),
            developer_payload: request.developer_payload,
        };
        let answer: plugin::AcknowledgeResponse = self
            .call(store, (abi::CAP_ACKNOWLEDGE, "Acknowledge"), abi::method::ACKNOWLEDGE, plugin_request, deadline)
            .await?;
        self.record_store_action(
            &request.store,
            &request.app_id,
            proof_hash.as_ref(),
            ledger::StoreAction::Acknowledged,
            deadline,
        )
        .await?;
        Ok(Response::new(pb::AcknowledgeResponse { already_acknowledged: answer.already_acknowledged }))
    }

    async fn consume_rpc(&self, request: Request<pb::ConsumeRequest>) -> Result<Response<pb::ConsumeResponse>, Status> {
        let deadline = self.deadline(&request);
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let store = self.store(&caller, &request.store, &request.app_id)?;
        validate::app_and_product(&request.app_id, &request.product_id)?;
        validate::proof(request.proof.as_ref())?;
        let proof_hash = self.proof_hash(request.proof.as_ref());
        let plugin_request = plugin::ConsumeRequest {
            app_id: request.app_id.clone(),
            product_id: request.product_id,
            proof: request.proof.map(convert::proof),
        };
        let answer: plugin::ConsumeResponse =
            self.call(store, (abi::CAP_CONSUME, "Consume"), abi::method::CONSUME, plugin_request, deadline).await?;
        self.record_store_action(
            &request.store,
            &request.app_id,
            proof_hash.as_ref(),
            ledger::StoreAction::Consumed,
            deadline,
        )
        .await?;
        Ok(Response::new(pb::ConsumeResponse { already_consumed: answer.already_consumed }))
    }

    async fn list_items_rpc(
        &self,
        request: Request<pb::ListItemsRequest>,
    ) -> Result<Response<pb::ListItemsResponse>, Status> {
        let deadline = self.deadline(&request);
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let store = self.store(&caller, &request.store, &request.app_id)?;
        validate::kind(request.kind)?;
        validate::paging(request.page_size, &request.page_token)?;
        let plugin_request = plugin::ListItemsRequest {
            app_id: request.app_id,
            kind: convert::product_kind_to_plugin(request.kind),
            page_size: request.page_size,
            page_token: request.page_token,
        };
        let answer: plugin::ListItemsResponse = self
            .call(store, (abi::CAP_LIST_ITEMS, "ListItems"), abi::method::LIST_ITEMS, plugin_request, deadline)
            .await?;
        Ok(Response::new(pb::ListItemsResponse {
            items: answer.items.into_iter().map(convert::catalog_item).collect(),
            next_page_token: answer.next_page_token,
        }))
    }

    async fn grant_rpc(&self, request: Request<pb::GrantRequest>) -> Result<Response<pb::GrantResponse>, Status> {
        let deadline = self.deadline(&request);
        let apps = Caller::of(&request)?.apps();
        let request = request.into_inner();
        let ledger = self.ledger("Grant")?;
        validate::purchase_id(&request.purchase_id)?;
        validate::required_user_id(&request.user_id)?;
        let grant = self.within(deadline, ledger.grant(&request.purchase_id, &request.user_id, &apps)).await?;
        let state = match grant.state {
            ledger::GrantState::Started => pb::GrantState::Started,
            ledger::GrantState::Pending => pb::GrantState::Pending,
            ledger::GrantState::Confirmed => pb::GrantState::Confirmed,
            ledger::GrantState::Revoked => pb::GrantState::Revoked,
        };
        Ok(Response::new(pb::GrantResponse {
            grant_id: grant.grant_id,
            state: state.into(),
            started_time: convert::timestamp(grant.started_ms),
        }))
    }

    async fn confirm_grant_rpc(
        &self,
        request: Request<pb::ConfirmGrantRequest>,
    ) -> Result<Response<pb::ConfirmGrantResponse>, Status> {
        let deadline = self.deadline(&request);
        let apps = Caller::of(&request)?.apps();
        let request = request.into_inner();
        let ledger = self.ledger("ConfirmGrant")?;
        validate::grant_id(&request.grant_id)?;
        let already_confirmed = self.within(deadline, ledger.confirm_grant(&request.grant_id, &apps)).await?;
        Ok(Response::new(pb::ConfirmGrantResponse { already_confirmed }))
    }

    async fn get_entitlements_rpc(
        &self,
        request: Request<pb::GetEntitlementsRequest>,
    ) -> Result<Response<pb::GetEntitlementsResponse>, Status> {
        let deadline = self.deadline(&request);
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let ledger = self.ledger("GetEntitlements")?;
        validate::app_id(&request.app_id)?;
        caller.check(None, &request.app_id)?;
        validate::required_user_id(&request.user_id)?;
        let found = self.within(deadline, ledger.entitlements_of(&request.app_id, &request.user_id)).await?;
        Ok(Response::new(pb::GetEntitlementsResponse {
            entitlements: found
                .entitlements
                .into_iter()
                .map(|entitlement| pb::Entitlement {
                    name: entitlement.name,
                    active: entitlement.active,
                    product_ids: entitlement.product_ids,
                    expiry_time: entitlement.expiry_ms.and_then(convert::timestamp),
                })
                .collect(),
            active_product_ids: found.active_product_ids,
        }))
    }

    async fn list_purchases_rpc(
        &self,
        request: Request<pb::ListPurchasesRequest>,
    ) -> Result<Response<pb::ListPurchasesResponse>, Status> {
        let deadline = self.deadline(&request);
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let ledger = self.ledger("ListPurchases")?;
        validate::app_id(&request.app_id)?;
        caller.check(None, &request.app_id)?;
        validate::required_user_id(&request.user_id)?;
        let (page_size, after) = validate::purchases_page(request.page_size, &request.page_token)?;
        // One more than the page tells whether another page follows.
        let mut held = self
            .within(deadline, ledger.purchases_of(&request.app_id, &request.user_id, &after, page_size + 1))
            .await?;
        let more = held.len() as i64 > page_size;
        held.truncate(usize::try_from(page_size).unwrap_or(usize::MAX));
        let next_page_token = if more {
            held.last().map(|last| format!("p1.{}", last.purchase_id)).unwrap_or_default()
        } else {
            String::new()
        };
        let now = ledger::now_ms();
        Ok(Response::new(pb::ListPurchasesResponse {
            purchases: held.into_iter().map(|purchase| convert::held_purchase(purchase, now)).collect(),
            next_page_token,
        }))
    }

    async fn watch_events_rpc(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let ledger = self.ledger("WatchEvents")?.clone();
        validate::app_id(&request.app_id)?;
        caller.check(None, &request.app_id)?;
        validate::user_id(&request.user_id)?;
        validate::event_kinds(&request.kinds)?;
        let after = validate::event_cursor(&request.after_cursor)?;
        let filter = ledger::EventFilter { app_id: request.app_id, user_id: request.user_id, kinds: request.kinds };
        let (sender, receiver) = tokio::sync::mpsc::channel(256);
        tokio::spawn(stream_events(ledger, filter, after, sender));
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))))
    }

    async fn list_stores_rpc(
        &self,
        request: Request<pb::ListStoresRequest>,
    ) -> Result<Response<pb::ListStoresResponse>, Status> {
        let caller = Caller::of(&request)?;
        // From the ledger (every replica's purchases, of the caller's apps);
        // left out while it cannot be read, rather than counted as none.
        let pending = match &self.ledger {
            Some(ledger) => match ledger.acknowledgements_pending(ACK_AT_RISK_WITHIN, &caller.apps()).await {
                Ok(pending) => Some(pending),
                Err(err) => {
                    tracing::warn!(%err, "cannot count the acknowledgements due for ListStores");
                    None
                }
            },
            None => None,
        };
        let stores = self
            .host
            .stores()
            .filter(|store| caller.may_use_store(store.id()))
            .map(|store| {
                let mut info = store_info(store);
                info.acknowledgements = pending.as_ref().map(|pending| {
                    let (due, at_risk) = pending.get(store.id()).copied().unwrap_or((0, 0));
                    pb::AcknowledgementCounts { unacknowledged: due, at_risk }
                });
                info
            })
            .collect();
        Ok(Response::new(pb::ListStoresResponse { stores }))
    }
}

#[tonic::async_trait]
impl PurchaseService for PurchaseApi {
    type WatchEventsStream = EventStream;

    async fn verify(&self, request: Request<pb::VerifyRequest>) -> Result<Response<pb::VerifyResponse>, Status> {
        metered(
            "Verify",
            request.get_ref().store.clone(),
            |answer| answer.verdict().as_str_name(),
            self.verify_rpc(request),
        )
        .await
    }

    async fn acknowledge(
        &self,
        request: Request<pb::AcknowledgeRequest>,
    ) -> Result<Response<pb::AcknowledgeResponse>, Status> {
        metered("Acknowledge", request.get_ref().store.clone(), no_verdict, self.acknowledge_rpc(request)).await
    }

    async fn consume(&self, request: Request<pb::ConsumeRequest>) -> Result<Response<pb::ConsumeResponse>, Status> {
        metered("Consume", request.get_ref().store.clone(), no_verdict, self.consume_rpc(request)).await
    }

    async fn list_items(
        &self,
        request: Request<pb::ListItemsRequest>,
    ) -> Result<Response<pb::ListItemsResponse>, Status> {
        metered("ListItems", request.get_ref().store.clone(), no_verdict, self.list_items_rpc(request)).await
    }

    async fn grant(&self, request: Request<pb::GrantRequest>) -> Result<Response<pb::GrantResponse>, Status> {
        metered("Grant", String::new(), no_verdict, self.grant_rpc(request)).await
    }

    async fn confirm_grant(
        &self,
        request: Request<pb::ConfirmGrantRequest>,
    ) -> Result<Response<pb::ConfirmGrantResponse>, Status> {
        metered("ConfirmGrant", String::new(), no_verdict, self.confirm_grant_rpc(request)).await
    }

    async fn get_entitlements(
        &self,
        request: Request<pb::GetEntitlementsRequest>,
    ) -> Result<Response<pb::GetEntitlementsResponse>, Status> {
        metered("GetEntitlements", String::new(), no_verdict, self.get_entitlements_rpc(request)).await
    }

    async fn list_purchases(
        &self,
        request: Request<pb::ListPurchasesRequest>,
    ) -> Result<Response<pb::ListPurchasesResponse>, Status> {
        metered("ListPurchases", String::new(), no_verdict, self.list_purchases_rpc(request)).await
    }

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        metered("WatchEvents", String::new(), no_verdict, self.watch_events_rpc(request)).await
    }

    async fn list_stores(
        &self,
        request: Request<pb::ListStoresRequest>,
    ) -> Result<Response<pb::ListStoresResponse>, Status> {
        metered("ListStores", String::new(), no_verdict, self.list_stores_rpc(request)).await
    }
}

/// The stream WatchEvents answers with.
type EventStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::WatchEventsResponse, Status>> + Send>>;

/// Runs an RPC's body and records its answer in the metrics: the method, the
/// store it named (empty for the ledger's RPCs), the verdict and the code.
async fn metered<T>(
    method: &'static str,
    store: String,
    verdict: fn(&T) -> &'static str,
    body: impl Future<Output = Result<Response<T>, Status>>,
) -> Result<Response<T>, Status> {
    let started = Instant::now();
    let answer = body.await;
    let (verdict, code) = match &answer {
        Ok(answer) => (verdict(answer.get_ref()), tonic::Code::Ok),
        Err(status) => ("", status.code()),
    };
    crate::telemetry::rpc_answered(method, &store, verdict, code, started.elapsed());
    answer
}

/// The verdict label of an RPC that has none.
fn no_verdict<T>(_: &T) -> &'static str {
    ""
}

/// A purchase whose acknowledgement deadline is nearer than this is at risk.
const ACK_AT_RISK_WITHIN: Duration = Duration::from_secs(24 * 3600);

/// The health service name of the ledger.
pub(crate) const LEDGER_HEALTH: &str = "iapd.v1.Ledger";

/// How often the ledger's health is checked.
const LEDGER_HEALTH_EVERY: Duration = Duration::from_secs(1);

/// Keeps the ledger's health entry true: NOT_SERVING while its database
/// cannot be reached (Verify answers UNAVAILABLE then), SERVING once it can.
async fn watch_ledger_health(ledger: Ledger, health: tonic_health::server::HealthReporter) {
    let mut serving = true;
    loop {
        tokio::time::sleep(LEDGER_HEALTH_EVERY).await;
        let reachable =
            tokio::time::timeout(LEDGER_HEALTH_EVERY, ledger.ping()).await.is_ok_and(|pinged| pinged.is_ok());
        if reachable != serving {
            serving = reachable;
            if serving {
                tracing::info!("the ledger's database is reachable again");
                health.set_service_status(LEDGER_HEALTH, tonic_health::ServingStatus::Serving).await;
            } else {
                tracing::warn!("the ledger's database cannot be reached");
                health.set_service_status(LEDGER_HEALTH, tonic_health::ServingStatus::NotServing).await;
            }
        }
    }
}

/// Gauges read from the stores whenever metrics are exported: calls in
/// flight and inline calls that overran their budget, per store. Kept while
/// the server runs.
fn store_gauges(host: &Arc<PluginHost>) -> impl Sized {
    use opentelemetry::KeyValue;
    let meter = opentelemetry::global::meter("iapd");
    let stores = host.clone();
    let in_flight = meter
        .u64_observable_gauge("iapd.store.in_flight")
        .with_description("plugin calls in flight, per store")
        .with_callback(move |observer| {
            for store in stores.stores() {
                observer.observe(store.calls_in_flight() as u64, &[KeyValue::new("store", store.id().to_owned())]);
            }
        })
        .build();
    let stores = host.clone();
    let overruns = meter
        .u64_observable_counter("iapd.plugin.inline_overruns")
        .with_description("inline plugin calls that held a runtime thread past their budget")
        .with_callback(move |observer| {
            for store in stores.stores() {
                let overruns = store.counters().inline_overruns.load(std::sync::atomic::Ordering::Relaxed);
                observer.observe(overruns, &[KeyValue::new("store", store.id().to_owned())]);
            }
        })
        .build();
    (in_flight, overruns)
}

/// How often each store's health is looked at.
const STORE_HEALTH_EVERY: Duration = Duration::from_millis(250);

/// Keeps each store's health entry true: NOT_SERVING while its circuit is
/// open or its bulkhead is full, so a probe sees which store is degraded
/// while the others, and the server, serve.
async fn watch_store_health(host: Arc<PluginHost>, health: tonic_health::server::HealthReporter) {
    let mut degraded: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    loop {
        for store in host.stores() {
            let why = store.degraded();
            if why.is_some() == degraded.contains(store.id()) {
                continue;
            }
            let name = store_health_name(store.id());
            if let Some(why) = why {
                tracing::warn!(store = store.id(), why, "store degraded: its health is NOT_SERVING");
                degraded.insert(store.id().to_owned());
                health.set_service_status(name, tonic_health::ServingStatus::NotServing).await;
            } else {
                tracing::info!(store = store.id(), "store serving again");
                degraded.remove(store.id());
                health.set_service_status(name, tonic_health::ServingStatus::Serving).await;
            }
        }
        tokio::time::sleep(STORE_HEALTH_EVERY).await;
    }
}

/// Feeds one subscriber: the events after `after` that pass `filter`, read
/// from the ledger, then each new one from this replica's event feed, until
/// the subscriber goes away. It joins the feed before it reads, and events
/// are numbered in commit order without gaps, so none is missed or sent
/// twice; one that falls too far behind the feed reads from the ledger again.
async fn stream_events(
    ledger: Ledger,
    filter: ledger::EventFilter,
    mut after: i64,
    sender: tokio::sync::mpsc::Sender<Result<pb::WatchEventsResponse, Status>>,
) {
    const PAGE: i64 = 500;
    let unavailable = |detail: String| Status::from(ApiError::LedgerUnavailable { detail });
    'resubscribe: loop {
        let mut feed = ledger.subscribe_events();
        loop {
            let events = match ledger.events_after(after, &filter, PAGE).await {
                Ok(events) => events,
                Err(err) => {
                    let _ = sender.send(Err(unavailable(err.to_string()))).await;
                    return;
                }
            };
            let full = events.len() as i64 == PAGE;
            for event in events {
                after = event.seq;
                if !deliver(&sender, &filter, &event).await {
                    return;
                }
            }
            if !full {
                break;
            }
        }
        loop {
            let published = tokio::select! {
                published = feed.recv() => published,
                () = sender.closed() => return,
            };
            match published {
                Ok(Ok(events)) => {
                    for event in events.iter() {
                        if event.seq <= after {
                            continue;
                        }
                        after = event.seq;
                        let wanted = event.app_id == filter.app_id
                            && (filter.user_id.is_empty() || event.user_id == filter.user_id);
                        if wanted && !deliver(&sender, &filter, event).await {
                            return;
                        }
                    }
                }
                Ok(Err(detail)) => {
                    let _ = sender.send(Err(unavailable(detail))).await;
                    return;
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue 'resubscribe,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

/// Sends one event if its kind is wanted; false once the subscriber is gone.
async fn deliver(
    sender: &tokio::sync::mpsc::Sender<Result<pb::WatchEventsResponse, Status>>,
    filter: &ledger::EventFilter,
    event: &ledger::Event,
) -> bool {
    if !filter.kinds.is_empty() && !filter.kinds.contains(&event.kind) {
        return true;
    }
    let event = pb::LedgerEvent {
        cursor: format!("e1.{}", event.seq),
        sequence: event.seq,
        time: convert::timestamp(event.at_ms),
        app_id: event.app_id.clone(),
        user_id: event.user_id.clone(),
        kind: event.kind.clone(),
        purchase_id: event.purchase_id.clone(),
        detail: event.detail.clone(),
    };
    sender.send(Ok(pb::WatchEventsResponse { event: Some(event) })).await.is_ok()
}

fn store_info(store: &StorePlugin) -> pb::StoreInfo {
    let meta = store.meta();
    let capabilities = [
        (abi::CAP_VERIFY, pb::Capability::Verify),
        (abi::CAP_ACKNOWLEDGE, pb::Capability::Acknowledge),
        (abi::CAP_CONSUME, pb::Capability::Consume),
        (abi::CAP_LIST_ITEMS, pb::Capability::ListItems),
    ]
    .into_iter()
    .filter(|(bit, _)| store.supports(*bit))
    .map(|(_, capability)| capability.into())
    .collect();
    pb::StoreInfo {
        id: store.id().to_owned(),
        display_name: meta.info.display_name.clone(),
        plugin_name: meta.descriptor.name.clone().unwrap_or_default(),
        plugin_version: meta.descriptor.version.clone(),
        abi_version: format!("{}.{}", meta.descriptor.abi_major, meta.descriptor.abi_minor),
        capabilities,
        proof_kinds: meta.info.proof_kinds.clone(),
        acknowledgements: None,
    }
}

/// The health service name of one store.
pub fn store_health_name(store: &str) -> String {
    format!("iapd.v1.PurchaseService/{store}")
}

pub(crate) async fn run(
    listener: TcpListener,
    config: Config,
    host: Arc<PluginHost>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let address = listener.local_addr()?;
    // What the configuration says of the listener is checked before anything starts.
    let (mode, tls) = crate::listener_settings(&config, address)?;
    let ledger = match &config.ledger {
        Some(settings) => {
            let ledger = Ledger::open(settings, settings.migrate_on_start).await?;
            tracing::info!(url = ledger.url(), "ledger open");
            Some(ledger)
        }
        None => {
            tracing::warn!("the ledger is off (ledger.enabled = false): purchases are verified but not recorded");
            None
        }
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<PurchaseServiceServer<PurchaseApi>>().await;
    for id in host.store_ids() {
        health.set_service_status(store_health_name(&id), tonic_health::ServingStatus::Serving).await;
    }
    let store_health = tokio::spawn(watch_store_health(host.clone(), health.clone()));
    let _store_gauges = store_gauges(&host);
    if let Some(ledger) = &ledger {
        health.set_service_status(LEDGER_HEALTH, tonic_health::ServingStatus::Serving).await;
        tokio::spawn(watch_ledger_health(ledger.clone(), health.clone()));
    }
    // Each reflection version also describes the other, so clients of
    // either can find and call both.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
            .include_reflection_service(false)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let purchase_api = PurchaseApi::new(host.clone(), ledger.clone(), &config);
    // Every replica acknowledges, each due purchase leased to one of them.
    let (stop_acknowledger, acknowledger_stopped) = tokio::sync::watch::channel(false);
    let acknowledger = ledger
        .as_ref()
        .filter(|_| config.ledger.as_ref().is_some_and(|settings| !settings.acknowledge.is_empty()))
        .map(|ledger| tokio::spawn(acknowledger::run(purchase_api.clone(), ledger.clone(), acknowledger_stopped)));
    let api = PurchaseServiceServer::new(purchase_api)
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);

    let routes = tonic::service::Routes::new(api)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .prepare();
    let grace = config.shutdown_grace;
    let (grace_over_tx, grace_over) = tokio::sync::watch::channel(false);
    let calls = layers::CallPolicy {
        default_timeout: config.default_timeout,
        max_timeout: config.max_timeout,
        max_message_bytes: config.max_message_bytes,
        admission: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_requests)),
        limit: config.max_concurrent_requests,
        grace_over,
        methods: crate::rpc_names().into_iter().map(|name| format!("/iapd.v1.PurchaseService/{name}")).collect(),
    };
    if mode == crate::config::AuthMode::Off {
        if address.ip().is_loopback() {
            tracing::info!("authentication is off: anyone who reaches this loopback address may call");
        } else {
            tracing::warn!(%address, "authentication is off (auth.mode = \"off\"): anyone who reaches the port may call");
        }
    }
    let auth = crate::auth::AuthLayer { authenticator: Arc::new(crate::auth::Authenticator::new(&config.auth, mode)) };
    let service = layers::service(routes, auth, calls);

    tracing::info!(%address, stores = ?host.store_ids(), tls = config.tls.is_some(), "iapd serving");
    let health_on_shutdown = health.clone();
    let shutdown = async move {
        shutdown.await;
        tracing::info!(grace_ms = grace.as_millis() as u64, "shutting down: draining calls in flight");
        let _ = stop_acknowledger.send(true);
        health_on_shutdown.set_not_serving::<PurchaseServiceServer<PurchaseApi>>().await;
        // When the grace ends, the call layer answers every call still
        // running (UNAVAILABLE, SHUTTING_DOWN), so no client is left with a
        // bare reset.
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let _ = grace_over_tx.send(true);
        });
    };
    // Past the grace, the answers above need a moment to be written.
    let tls_watch = tls.as_ref().and_then(crate::tls::Tls::watch);
    transport::serve(listener, service, &config.connections, shutdown, grace + Duration::from_secs(1), tls).await;
    if let Some(watch) = tls_watch {
        watch.abort();
    }
    // One cut short is leased, not lost: it is tried again when its lease ends.
    if let Some(acknowledger) = acknowledger {
        acknowledger.abort();
    }
    store_health.abort();
    tracing::info!("iapd stopped");
    Ok(())
}
