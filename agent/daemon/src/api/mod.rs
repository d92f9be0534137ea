//! The gRPC service: decodes requests, calls the agent core, encodes replies.
//! Every mutating call writes one structured audit line: who, what, result.

pub mod codec;
pub mod convert;
pub mod status;
pub mod watch;

/// The `FanAgentService` server glue generated for the agent (see build.rs):
/// `fan_proto::v1`'s service, decoding requests with [`codec::RequestCodec`].
pub mod generated {
    #![allow(clippy::doc_lazy_continuation, clippy::large_enum_variant)]
    include!(concat!(env!("OUT_DIR"), "/fan.agent.v1.rs"));
}

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use fan_proto::v1 as pb;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

use generated::fan_agent_service_server::{FanAgentService, FanAgentServiceServer};

use crate::agent::Agent;
use crate::caller::{caller, caller_of};
use crate::error::{clip, AgentError, Result};
use crate::validate;

/// The tonic service over one [`Agent`].
#[derive(Clone)]
pub struct FanAgentApi {
    agent: Arc<Agent>,
}

impl FanAgentApi {
    /// Wraps an agent.
    pub fn new(agent: Arc<Agent>) -> Self {
        FanAgentApi { agent }
    }
}

/// The agent's service, ready to route: requests that do not decode are
/// answered INVALID_ARGUMENT and audited with their caller.
pub fn service(agent: Arc<Agent>, max_decoding_message_size: usize) -> Audited {
    Audited(
        FanAgentServiceServer::new(FanAgentApi::new(agent))
            .max_decoding_message_size(max_decoding_message_size),
    )
}

/// [`FanAgentServiceServer`] with each call's caller and method in scope
/// ([`codec::CALL`]), so request decoding can audit what it refuses.
#[derive(Clone)]
pub struct Audited(FanAgentServiceServer<FanAgentApi>);

impl<B> Service<http::Request<B>> for Audited
where
    FanAgentServiceServer<FanAgentApi>: Service<http::Request<B>>,
    <FanAgentServiceServer<FanAgentApi> as Service<http::Request<B>>>::Future: Send + 'static,
{
    type Response = <FanAgentServiceServer<FanAgentApi> as Service<http::Request<B>>>::Response;
    type Error = <FanAgentServiceServer<FanAgentApi> as Service<http::Request<B>>>::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let context = codec::CallContext {
            who: caller_of(request.extensions()),
            method: request.uri().path().to_owned(),
        };
        let call = self.0.call(request);
        Box::pin(codec::CALL.scope(context, call))
    }
}

impl NamedService for Audited {
    const NAME: &'static str = <FanAgentServiceServer<FanAgentApi> as NamedService>::NAME;
}

/// Logs one audit line for a mutating call and converts the result.
fn audited<T>(who: &str, what: &str, target: &str, result: Result<T>) -> Result<T, Status> {
    audited_on(who, what, target, None, None, result)
}

/// [`audited`] for calls on one allocation: the line also carries its owner
/// ("container_id/interface") and address, when known.
fn audited_on<T>(
    who: &str,
    what: &str,
    target: &str,
    owner: Option<&str>,
    address: Option<&str>,
    result: Result<T>,
) -> Result<T, Status> {
    // Request fields can be megabytes long; an audit line must stay a line.
    let target = clip(target);
    let target = target.as_ref();
    let owner = owner.map(clip);
    let owner = owner.as_deref();
    let address = address.map(clip);
    let address = address.as_deref();
    match &result {
        Ok(_) => tracing::info!(target: "audit", who, what, target, owner, address, result = "ok"),
        Err(err) => {
            tracing::info!(target: "audit", who, what, target, owner, address, result = "error", error = %clip(&err.to_string()))
        }
    }
    result.map_err(Status::from)
}

/// An owner as audit lines show it: "container_id/interface".
fn owner_text(container_id: &str, interface: &str) -> String {
    let interface = if interface.is_empty() {
        crate::model::DEFAULT_INTERFACE
    } else {
        interface
    };
    format!("{container_id}/{interface}")
}

/// The owner and address a selector names, for the audit line.
fn selector_text(selector: &Option<pb::AllocationSelector>) -> (Option<String>, Option<String>) {
    match selector.as_ref().and_then(|s| s.selector.as_ref()) {
        Some(pb::allocation_selector::Selector::Owner(o)) => {
            (Some(owner_text(&o.container_id, &o.interface)), None)
        }
        Some(pb::allocation_selector::Selector::Address(a)) => (None, Some(a.clone())),
        None => (None, None),
    }
}

/// Checks a network id and a selector together (both violations at once).
fn network_and_selector(
    network_id: &str,
    selector: Option<pb::AllocationSelector>,
) -> Result<crate::model::Selector> {
    let mut checks = validate::Checks::new();
    checks.check(validate::network_id("network_id", network_id));
    let selector = checks.check(convert::selector(selector));
    checks.finish_with(selector)
}

#[tonic::async_trait]
impl FanAgentService for FanAgentApi {
    async fn get_agent_info(
        &self,
        _request: Request<pb::GetAgentInfoRequest>,
    ) -> Result<Response<pb::GetAgentInfoResponse>, Status> {
        let info = self.agent.info().await?;
        Ok(Response::new(convert::agent_info(&info)))
    }

    async fn create_network(
        &self,
        request: Request<pb::CreateNetworkRequest>,
    ) -> Result<Response<pb::CreateNetworkResponse>, Status> {
        let who = caller(&request);
        let req = request.into_inner();
        let id = req.network_id.clone();
        let result = async {
            let input = convert::spec_input(req.spec)?;
            self.agent.create_network(&req.network_id, &input).await
        }
        .await;
        let view = audited(&who, "CreateNetwork", &id, result)?;
        Ok(Response::new(pb::CreateNetworkResponse {
            network: Some(convert::network(&view)),
        }))
    }

    async fn get_network(
        &self,
        request: Request<pb::GetNetworkRequest>,
    ) -> Result<Response<pb::GetNetworkResponse>, Status> {
        let view = self
            .agent
            .get_network(&request.get_ref().network_id)
            .await?;
        Ok(Response::new(pb::GetNetworkResponse {
            network: Some(convert::network(&view)),
        }))
    }

    async fn list_networks(
        &self,
        request: Request<pb::ListNetworksRequest>,
    ) -> Result<Response<pb::ListNetworksResponse>, Status> {
        let req = request.get_ref();
        let page = self
            .agent
            .list_networks(req.page_size, &req.page_token)
            .await?;
        Ok(Response::new(pb::ListNetworksResponse {
            networks: page.items.iter().map(convert::network).collect(),
            next_page_token: page.next_page_token,
            revision: page.revision,
        }))
    }

    async fn delete_network(
        &self,
        request: Request<pb::DeleteNetworkRequest>,
    ) -> Result<Response<pb::DeleteNetworkResponse>, Status> {
        let who = caller(&request);
        let req = request.into_inner();
        let result = self
            .agent
            .delete_network(&req.network_id, req.force, req.allow_missing)
            .await;
        let (deleted, released) = audited(&who, "DeleteNetwork", &req.network_id, result)?;
        Ok(Response::new(pb::DeleteNetworkResponse {
            deleted,
            released_allocations: released,
        }))
    }

    async fn check_network(
        &self,
        request: Request<pb::CheckNetworkRequest>,
    ) -> Result<Response<pb::CheckNetworkResponse>, Status> {
        let drifts = self
            .agent
            .check_network(&request.get_ref().network_id)
            .await?;
        Ok(Response::new(pb::CheckNetworkResponse {
            drifts: drifts.iter().map(convert::drift).collect(),
        }))
    }

    async fn allocate_address(
        &self,
        request: Request<pb::AllocateAddressRequest>,
    ) -> Result<Response<pb::AllocateAddressResponse>, Status> {
        let who = caller(&request);
        let req = request.into_inner();
        let target = req.network_id.clone();
        let mut owner = req
            .owner
            .as_ref()
            .map(|o| owner_text(&o.container_id, &o.interface));
        let mut address = (!req.address.is_empty()).then(|| req.address.clone());
        let result = async {
            // Every invalid field at once.
            let mut checks = validate::Checks::new();
            checks.check(validate::network_id("network_id", &req.network_id));
            let owner = checks.check(convert::owner("owner", req.owner));
            let requested = match req.address.as_str() {
                "" => Some(None),
                text => checks.check(validate::address("address", text)).map(Some),
            };
            let labels: BTreeMap<String, String> = req.labels.into_iter().collect();
            checks.check(validate::labels("labels", &labels));
            let (owner, requested) = checks.finish_with(owner.zip(requested))?;
            self.agent
                .allocate(&req.network_id, owner, requested, labels)
                .await
        }
        .await;
        if let Ok((view, _)) = &result {
            owner = Some(owner_text(
                &view.record.owner.container_id,
                &view.record.owner.interface,
            ));
            address = Some(view.record.address.to_string());
        }
        let (view, created) = audited_on(
            &who,
            "AllocateAddress",
            &target,
            owner.as_deref(),
            address.as_deref(),
            result,
        )?;
        Ok(Response::new(pb::AllocateAddressResponse {
            allocation: Some(convert::allocation(&view)),
            created,
        }))
    }

    async fn get_allocation(
        &self,
        request: Request<pb::GetAllocationRequest>,
    ) -> Result<Response<pb::GetAllocationResponse>, Status> {
        let req = request.into_inner();
        let selector = network_and_selector(&req.network_id, req.selector)?;
        let view = self.agent.get_allocation(&req.network_id, selector).await?;
        Ok(Response::new(pb::GetAllocationResponse {
            allocation: Some(convert::allocation(&view)),
        }))
    }

    async fn release_address(
        &self,
        request: Request<pb::ReleaseAddressRequest>,
    ) -> Result<Response<pb::ReleaseAddressResponse>, Status> {
        let who = caller(&request);
        let req = request.into_inner();
        let (mut owner, mut address) = selector_text(&req.selector);
        let result = async {
            let selector = network_and_selector(&req.network_id, req.selector)?;
            self.agent
                .release(&req.network_id, selector, req.allow_missing)
                .await
        }
        .await;
        if let Ok(Some(view)) = &result {
            owner = Some(owner_text(
                &view.record.owner.container_id,
                &view.record.owner.interface,
            ));
            address = Some(view.record.address.to_string());
        }
        let released = audited_on(
            &who,
            "ReleaseAddress",
            &req.network_id,
            owner.as_deref(),
            address.as_deref(),
            result,
        )?;
        Ok(Response::new(pb::ReleaseAddressResponse {
            allocation: released.as_ref().map(convert::allocation),
        }))
    }

    async fn list_allocations(
        &self,
        request: Request<pb::ListAllocationsRequest>,
    ) -> Result<Response<pb::ListAllocationsResponse>, Status> {
        let req = request.get_ref();
        let mut checks = validate::Checks::new();
        if req.owner_container_id.len() > 256 {
            checks.check::<()>(Err(AgentError::invalid(
                "owner_container_id",
                "at most 256 characters",
            )));
        }
        let labels = checks.check(validate::label_selector(
            "label_selector",
            &req.label_selector,
        ));
        let labels = checks.finish_with(labels)?;
        let filter = crate::agent::AllocationFilter {
            container_id: req.owner_container_id.clone(),
            labels,
        };
        let page = self
            .agent
            .list_allocations(&req.network_id, filter, req.page_size, &req.page_token)
            .await?;
        Ok(Response::new(pb::ListAllocationsResponse {
            allocations: page.items.iter().map(convert::allocation).collect(),
            next_page_token: page.next_page_token,
            revision: page.revision,
        }))
    }

    async fn garbage_collect_allocations(
        &self,
        request: Request<pb::GarbageCollectAllocationsRequest>,
    ) -> Result<Response<pb::GarbageCollectAllocationsResponse>, Status> {
        let who = caller(&request);
        let req = request.into_inner();
        let result = async {
            if req.valid_owners.len() > validate::MAX_VALID_OWNERS {
                return Err(AgentError::invalid(
                    "valid_owners",
                    format!(
                        "at most {} owners, got {}",
                        validate::MAX_VALID_OWNERS,
                        req.valid_owners.len()
                    ),
                ));
            }
            let mut checks = validate::Checks::new();
            checks.check(validate::network_id("network_id", &req.network_id));
            let valid: BTreeSet<_> = req
                .valid_owners
                .into_iter()
                .enumerate()
                .filter_map(|(i, o)| {
                    checks.check(convert::owner(&format!("valid_owners[{i}]"), Some(o)))
                })
                .collect();
            checks.finish()?;
            self.agent
                .garbage_collect(&req.network_id, valid, req.dry_run)
                .await
        }
        .await;
        let what = if req.dry_run {
            "GarbageCollectAllocations(dry-run)"
        } else {
            "GarbageCollectAllocations"
        };
        let released = audited(&who, what, &req.network_id, result)?;
        Ok(Response::new(pb::GarbageCollectAllocationsResponse {
            released: released.iter().map(convert::allocation).collect(),
        }))
    }

    async fn update_network(
        &self,
        request: Request<pb::UpdateNetworkRequest>,
    ) -> Result<Response<pb::UpdateNetworkResponse>, Status> {
        let who = caller(&request);
        let req = request.into_inner();
        let result = async {
            let update = watch::network_update(&req)?;
            self.agent.update_network(&req.network_id, update).await
        }
        .await;
        let (view, changed) = audited(&who, "UpdateNetwork", &req.network_id, result)?;
        Ok(Response::new(pb::UpdateNetworkResponse {
            network: Some(convert::network(&view)),
            changed,
        }))
    }

    type WatchEventsStream = watch::EventStream;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let stream = watch::watch(&self.agent, request.into_inner())?;
        Ok(Response::new(stream))
    }

    async fn resolve_address(
        &self,
        request: Request<pb::ResolveAddressRequest>,
    ) -> Result<Response<pb::ResolveAddressResponse>, Status> {
        let req = request.get_ref();
        let mut checks = validate::Checks::new();
        let address = checks.check(validate::address("address", &req.address));
        if !req.network_id.is_empty() {
            checks.check(validate::network_id("network_id", &req.network_id));
        }
        let adhoc = match (req.overlay.as_str(), req.underlay.as_str()) {
            ("", "") => Some(None),
            (overlay, underlay) if !overlay.is_empty() && !underlay.is_empty() => {
                let overlay = checks.check(
                    fan_core::fan::parse_overlay(overlay)
                        .map_err(|e| AgentError::invalid("overlay", e)),
                );
                let underlay = checks.check(
                    fan_core::fan::parse_network(underlay)
                        .map_err(|e| AgentError::invalid("underlay", e)),
                );
                overlay.zip(underlay).map(Some)
            }
            (overlay, _) => {
                let missing = if overlay.is_empty() {
                    "overlay"
                } else {
                    "underlay"
                };
                checks.check::<()>(Err(AgentError::invalid(
                    missing,
                    "overlay and underlay must be given together",
                )));
                None
            }
        };
        let (address, adhoc) = checks.finish_with(address.zip(adhoc))?;
        let resolutions = self.agent.resolve(address, &req.network_id, adhoc).await?;
        Ok(Response::new(pb::ResolveAddressResponse {
            resolutions: resolutions.iter().map(convert::resolution).collect(),
        }))
    }
}
