//! The reasons the agent puts in `google.rpc.ErrorInfo.reason`: one value
//! per `fan.agent.v1.ErrorReason` in the proto (a unit test holds the two
//! lists equal). Which gRPC code each one leaves with is decided in one
//! place, `api::status::code_of`.

/// Why a call failed, as sent on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Request fields break rules (BadRequest lists every one).
    FieldInvalid,
    /// The request bytes do not decode as the method's request message.
    MalformedRequest,
    /// No network has the id.
    NetworkNotFound,
    /// The network has no such allocation.
    AllocationNotFound,
    /// The network exists with a different spec.
    NetworkExists,
    /// The network still has allocations.
    NetworkInUse,
    /// Another network uses the bridge.
    BridgeInUse,
    /// Another network's overlay overlaps.
    OverlayInUse,
    /// Deprecated, never sent: split into AddressHeldByOtherOwner and
    /// OwnerHasOtherAddress (kept so the list equals the proto enum).
    AddressTaken,
    /// The underlay matches nothing on this host.
    UnderlayNotFound,
    /// The requested backend cannot run here.
    BackendUnavailable,
    /// Auto found no backend that can run here.
    NoBackendAvailable,
    /// No free network index.
    TooManyNetworks,
    /// The kernel refused to program a new network (rolled back).
    NetworkProgrammingFailed,
    /// The slice has no free address.
    SliceExhausted,
    /// The state store failed.
    StateStoreFailed,
    /// The data plane of an existing network could not be changed or read.
    DataplaneFailed,
    /// The agent is stopping.
    ShuttingDown,
    /// RESOURCE_EXHAUSTED: the watch stream fell too far behind the agent's
    WatcherTooSlow,
    /// OUT_OF_RANGE: WatchEvents was asked to start from a revision older than the
    RevisionCompacted,
    /// FAILED_PRECONDITION: UpdateNetwork would reserve for the host an
    HostReserveCoversAllocation,
    /// FAILED_PRECONDITION: the owner already holds an allocation whose labels
    OwnerLabelsDiffer,
    /// FAILED_PRECONDITION: the owner already holds a different address than
    OwnerHasOtherAddress,
    /// FAILED_PRECONDITION: the requested address is held by another owner.
    AddressHeldByOtherOwner,
    /// DATA_LOSS: the state on disk cannot be trusted (a record fails its
    StateCorrupt,
    /// UNAVAILABLE: the state directory takes no writes (disk full, I/O error);
    StateUnwritable,
    /// FAILED_PRECONDITION: the host no longer owns the network's slice (its underlay
    SliceNotOwned,
    /// FAILED_PRECONDITION: the overlay overlaps this host's own addresses or routes
    OverlayOverlapsHost,
}

impl Reason {
    /// Every reason, in proto order.
    pub const ALL: [Reason; 28] = [
        Reason::FieldInvalid,
        Reason::MalformedRequest,
        Reason::NetworkNotFound,
        Reason::AllocationNotFound,
        Reason::NetworkExists,
        Reason::NetworkInUse,
        Reason::BridgeInUse,
        Reason::OverlayInUse,
        Reason::AddressTaken,
        Reason::UnderlayNotFound,
        Reason::BackendUnavailable,
        Reason::NoBackendAvailable,
        Reason::TooManyNetworks,
        Reason::NetworkProgrammingFailed,
        Reason::SliceExhausted,
        Reason::StateStoreFailed,
        Reason::DataplaneFailed,
        Reason::ShuttingDown,
        Reason::OverlayOverlapsHost,
        Reason::SliceNotOwned,
        Reason::StateUnwritable,
        Reason::StateCorrupt,
        Reason::AddressHeldByOtherOwner,
        Reason::OwnerHasOtherAddress,
        Reason::OwnerLabelsDiffer,
        Reason::HostReserveCoversAllocation,
        Reason::RevisionCompacted,
        Reason::WatcherTooSlow,
    ];

    /// The wire string: the proto value's name without `ERROR_REASON_`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::FieldInvalid => "FIELD_INVALID",
            Reason::MalformedRequest => "MALFORMED_REQUEST",
            Reason::NetworkNotFound => "NETWORK_NOT_FOUND",
            Reason::AllocationNotFound => "ALLOCATION_NOT_FOUND",
            Reason::NetworkExists => "NETWORK_EXISTS",
            Reason::NetworkInUse => "NETWORK_IN_USE",
            Reason::BridgeInUse => "BRIDGE_IN_USE",
            Reason::OverlayInUse => "OVERLAY_IN_USE",
            Reason::AddressTaken => "ADDRESS_TAKEN",
            Reason::UnderlayNotFound => "UNDERLAY_NOT_FOUND",
            Reason::BackendUnavailable => "BACKEND_UNAVAILABLE",
            Reason::NoBackendAvailable => "NO_BACKEND_AVAILABLE",
            Reason::TooManyNetworks => "TOO_MANY_NETWORKS",
            Reason::NetworkProgrammingFailed => "NETWORK_PROGRAMMING_FAILED",
            Reason::SliceExhausted => "SLICE_EXHAUSTED",
            Reason::StateStoreFailed => "STATE_STORE_FAILED",
            Reason::DataplaneFailed => "DATAPLANE_FAILED",
            Reason::ShuttingDown => "SHUTTING_DOWN",
            Reason::WatcherTooSlow => "WATCHER_TOO_SLOW",
            Reason::RevisionCompacted => "REVISION_COMPACTED",
            Reason::HostReserveCoversAllocation => "HOST_RESERVE_COVERS_ALLOCATION",
            Reason::OwnerLabelsDiffer => "OWNER_LABELS_DIFFER",
            Reason::OwnerHasOtherAddress => "OWNER_HAS_OTHER_ADDRESS",
            Reason::AddressHeldByOtherOwner => "ADDRESS_HELD_BY_OTHER_OWNER",
            Reason::StateCorrupt => "STATE_CORRUPT",
            Reason::StateUnwritable => "STATE_UNWRITABLE",
            Reason::SliceNotOwned => "SLICE_NOT_OWNED",
            Reason::OverlayOverlapsHost => "OVERLAY_OVERLAPS_HOST",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
