//! The gRPC service: decodes requests, calls the agent core, encodes replies.
//! Every mutating call writes one structured audit line: who, what, result.

pub mod convert;
pub mod status;

use std::collections::BTreeSet;
use std::sync::Arc;

use fan_proto::v1 as pb;
use fan_proto::v1::fan_agent_service_server::FanAgentService;
use tonic::{Request, Response, Status};

use crate::agent::Agent;
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

/// Who made a request: unix peer credentials, or the TCP peer and its
/// client-certificate subject when mutual TLS is on.
pub fn caller<T>(request: &Request<T>) -> String {
    if let Some(info) = request
        .extensions()
        .get::<tonic::transport::server::UdsConnectInfo>()
    {
        if let Some(cred) = info.peer_cred {
            return format!(
                "unix:uid={},gid={},pid={}",
                cred.uid(),
                cred.gid(),
                cred.pid().unwrap_or(0)
            );
        }
        return "unix:unknown".to_owned();
    }
    if let Some(subject) = request.extensions().get::<crate::server::PeerIdentity>() {
        return subject.0.clone();
    }
    match request.remote_addr() {
        Some(addr) => format!("tcp:{addr}"),
        None => "unknown".to_owned(),
    }
}

/// Logs one audit line for a mutating call and converts the result.
fn audited<T>(who: &str, what: &str, target: &str, result: Result<T>) -> Result<T, Status> {
    // Request fields can be megabytes long; an audit line must stay a line.
    let target = clip(target);
    let target = target.as_ref();
    match &result {
        Ok(_) => tracing::info!(target: "audit", who, what, target, result = "ok"),
        Err(err) => {
            tracing::info!(target: "audit", who, what, target, result = "error", error = %clip(&err.to_string()))
        }
    }
    result.map_err(Status::from)
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
        let result = async {
            let owner = convert::owner("owner", req.owner)?;
            let requested = match req.address.as_str() {
                "" => None,
                text => Some(validate::address("address", text)?),
            };
            let labels = req.labels.into_iter().collect();
            self.agent
                .allocate(&req.network_id, owner, requested, labels)
                .await
        }
        .await;
        let (view, _) = audited(&who, "AllocateAddress", &target, result)?;
        Ok(Response::new(pb::AllocateAddressResponse {
            allocation: Some(convert::allocation(&view)),
        }))
    }

    async fn get_allocation(
        &self,
        request: Request<pb::GetAllocationRequest>,
    ) -> Result<Response<pb::GetAllocationResponse>, Status> {
        let req = request.into_inner();
        let selector = convert::selector(req.selector)?;
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
        let result = async {
            let selector = convert::selector(req.selector)?;
            self.agent
                .release(&req.network_id, selector, req.allow_missing)
                .await
        }
        .await;
        let released = audited(&who, "ReleaseAddress", &req.network_id, result)?;
        Ok(Response::new(pb::ReleaseAddressResponse {
            allocation: released.as_ref().map(convert::allocation),
        }))
    }

    async fn list_allocations(
        &self,
        request: Request<pb::ListAllocationsRequest>,
    ) -> Result<Response<pb::ListAllocationsResponse>, Status> {
        let req = request.get_ref();
        let page = self
            .agent
            .list_allocations(&req.network_id, req.page_size, &req.page_token)
            .await?;
        Ok(Response::new(pb::ListAllocationsResponse {
            allocations: page.items.iter().map(convert::allocation).collect(),
            next_page_token: page.next_page_token,
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
            let valid = req
                .valid_owners
                .into_iter()
                .map(|o| convert::owner("valid_owners", Some(o)))
                .collect::<Result<BTreeSet<_>>>()?;
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

    async fn resolve_address(
        &self,
        request: Request<pb::ResolveAddressRequest>,
    ) -> Result<Response<pb::ResolveAddressResponse>, Status> {
        let req = request.get_ref();
        let address = validate::address("address", &req.address)?;
        let adhoc = match (req.overlay.as_str(), req.underlay.as_str()) {
            ("", "") => None,
            (overlay, underlay) if !overlay.is_empty() && !underlay.is_empty() => {
                let overlay = fan_core::fan::parse_overlay(overlay)
                    .map_err(|e| Status::from(AgentError::invalid("overlay", e)))?;
                let underlay = fan_core::fan::parse_network(underlay)
                    .map_err(|e| Status::from(AgentError::invalid("underlay", e)))?;
                Some((overlay, underlay))
            }
            _ => {
                return Err(AgentError::invalid(
                    "overlay",
                    "overlay and underlay must be given together",
                )
                .into())
            }
        };
        let resolutions = self.agent.resolve(address, &req.network_id, adhoc).await?;
        Ok(Response::new(pb::ResolveAddressResponse {
            resolutions: resolutions.iter().map(convert::resolution).collect(),
        }))
    }
}
