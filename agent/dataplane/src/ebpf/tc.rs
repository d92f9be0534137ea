//! clsact qdiscs and cls_bpf filters, through netlink.
//!
//! Filters are attached with aya's netlink mode (not TCX links: those vanish
//! with the process, and the data path must survive agent restarts). aya
//! detaches a link when its handle is dropped, so every link is taken out of
//! the program and forgotten: the filter then lives until someone deletes it.
//! Listing, deleting and the qdisc use plain rtnetlink messages.

use futures::{StreamExt, TryStreamExt};
use netlink_packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::tc::{
    TcAttribute, TcFilterBpfOption, TcHandle as NlTcHandle, TcMessage, TcOption,
};
use netlink_packet_route::RouteNetlinkMessage;

use aya::programs::tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle};
use aya::programs::{SchedClassifier, TcAttachType};

use crate::netlink::{errno, netlink_error};
use crate::{DataplaneError, Result};

/// The filter handle of every filter the agent attaches (priority tells
/// networks apart; the handle is our mark inside a priority).
pub const TC_HANDLE: u32 = 0xfa;

/// ETH_P_ALL in network byte order, the protocol aya attaches with.
const ETH_P_ALL_BE: u16 = (libc::ETH_P_ALL as u16).to_be();

/// The two clsact hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// Ingress (parent ffff:fff2).
    Ingress,
    /// Egress (parent ffff:fff3).
    Egress,
}

impl Hook {
    fn parent(self) -> NlTcHandle {
        NlTcHandle {
            major: 0xffff,
            minor: match self {
                Hook::Ingress => NlTcHandle::MIN_INGRESS,
                Hook::Egress => NlTcHandle::MIN_EGRESS,
            },
        }
    }

    fn attach_type(self) -> TcAttachType {
        match self {
            Hook::Ingress => TcAttachType::Ingress,
            Hook::Egress => TcAttachType::Egress,
        }
    }

    /// "ingress" / "egress".
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Ingress => "ingress",
            Hook::Egress => "egress",
        }
    }
}

/// One tc filter as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// Priority ("pref").
    pub priority: u16,
    /// Filter handle.
    pub handle: u32,
    /// Classifier kind ("bpf", "u32", …).
    pub kind: String,
    /// For cls_bpf: the program name given at attach time.
    pub name: Option<String>,
    /// For cls_bpf: the attached program's id.
    pub prog_id: Option<u32>,
    /// For cls_bpf: the attached program's tag.
    pub tag: Option<u64>,
}

fn parse_filter(msg: TcMessage) -> Option<Filter> {
    let handle = u32::from(msg.header.handle);
    // Each priority also lists a chain header entry without a handle.
    if handle == 0 {
        return None;
    }
    let mut filter = Filter {
        priority: (msg.header.info >> 16) as u16,
        handle,
        kind: String::new(),
        name: None,
        prog_id: None,
        tag: None,
    };
    for attr in msg.attributes {
        match attr {
            TcAttribute::Kind(kind) => filter.kind = kind,
            TcAttribute::Options(options) => {
                for option in options {
                    match option {
                        TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => filter.name = Some(n),
                        TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => filter.prog_id = Some(id),
                        TcOption::Bpf(TcFilterBpfOption::ProgTag(t)) => {
                            filter.tag = Some(u64::from_be_bytes(t))
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(filter)
}

/// Sends a request that answers with an ACK or an error.
async fn request_ack(
    handle: &rtnetlink::Handle,
    message: RouteNetlinkMessage,
    flags: u16,
) -> std::result::Result<(), rtnetlink::Error> {
    let mut req = NetlinkMessage::from(message);
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    let mut handle = handle.clone();
    let mut response = handle.request(req)?;
    while let Some(msg) = response.next().await {
        if let NetlinkPayload::Error(err) = msg.payload {
            // An "error" without a code is the ACK.
            if err.code.is_some() {
                return Err(rtnetlink::Error::NetlinkError(err));
            }
        }
    }
    Ok(())
}

/// The filters on one hook of device `ifindex`. A device without clsact has none.
pub async fn list_filters(
    handle: &rtnetlink::Handle,
    ifindex: u32,
    hook: Hook,
) -> Result<Vec<Filter>> {
    let request = handle.traffic_filter(ifindex as i32).get();
    let request = match hook {
        Hook::Ingress => request.ingress(),
        Hook::Egress => request.egress(),
    };
    match request.execute().try_collect::<Vec<_>>().await {
        Ok(messages) => Ok(messages
            .into_iter()
            // Without strict checking the kernel may answer for other parents.
            .filter(|m| m.header.parent == hook.parent() && m.header.index == ifindex as i32)
            .filter_map(parse_filter)
            .collect()),
        Err(e) if matches!(errno(&e), Some(libc::EINVAL | libc::ENOENT | libc::ENODEV)) => {
            Ok(Vec::new())
        }
        Err(e) => Err(netlink_error(
            format!("list tc {} filters of link #{ifindex}", hook.as_str()),
            e,
        )),
    }
}

/// The filters at `priority` on one hook of device `ifindex`. The kernel
/// filters the dump by priority (`tcm_info`), so this costs the same however
/// many other networks have filters on the device.
pub async fn list_filters_at(
    handle: &rtnetlink::Handle,
    ifindex: u32,
    hook: Hook,
    priority: u16,
) -> Result<Vec<Filter>> {
    let mut msg = TcMessage::with_index(ifindex as i32);
    msg.header.parent = hook.parent();
    msg.header.info = u32::from(priority) << 16;
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetTrafficFilter(msg));
    req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let context = || {
        format!(
            "list tc {} filters pref {priority} of link #{ifindex}",
            hook.as_str()
        )
    };
    let mut handle = handle.clone();
    let mut response = handle
        .request(req)
        .map_err(|e| netlink_error(context(), e))?;
    let mut filters = Vec::new();
    while let Some(msg) = response.next().await {
        match msg.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewTrafficFilter(m))
                if m.header.parent == hook.parent()
                    && m.header.index == ifindex as i32
                    && (m.header.info >> 16) as u16 == priority =>
            {
                filters.extend(parse_filter(m));
            }
            NetlinkPayload::Error(err) if err.code.is_some() => {
                let e = rtnetlink::Error::NetlinkError(err);
                if matches!(errno(&e), Some(libc::EINVAL | libc::ENOENT | libc::ENODEV)) {
                    return Ok(Vec::new());
                }
                return Err(netlink_error(context(), e));
            }
            _ => {}
        }
    }
    Ok(filters)
}

/// True when device `ifindex` has a clsact qdisc. Asked for that one
/// qdisc (a get, not a dump: the kernel dumps the qdiscs of every device
/// whatever the request names, which grows with the number of networks).
pub async fn has_clsact(handle: &rtnetlink::Handle, ifindex: u32) -> Result<bool> {
    let mut msg = TcMessage::with_index(ifindex as i32);
    // The ingress/clsact slot of the device.
    msg.header.parent = NlTcHandle::CLSACT;
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetQueueDiscipline(msg));
    // The ACK ends the answer (a lone qdisc message would not).
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let context = || format!("get the clsact qdisc of link #{ifindex}");
    let mut handle = handle.clone();
    let mut response = handle
        .request(req)
        .map_err(|e| netlink_error(context(), e))?;
    let mut found = false;
    while let Some(msg) = response.next().await {
        match msg.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewQueueDiscipline(m)) => {
                found |= m.header.index == ifindex as i32
                    && m.attributes
                        .iter()
                        .any(|a| matches!(a, TcAttribute::Kind(k) if k == "clsact"));
            }
            NetlinkPayload::Error(err) if err.code.is_some() => {
                let e = rtnetlink::Error::NetlinkError(err);
                // No ingress slot (or nothing in it): no clsact.
                if matches!(errno(&e), Some(libc::ENOENT | libc::EINVAL)) {
                    return Ok(false);
                }
                return Err(netlink_error(context(), e));
            }
            _ => {}
        }
    }
    Ok(found)
}

fn clsact_message(ifindex: u32) -> TcMessage {
    let mut msg = TcMessage::with_index(ifindex as i32);
    msg.header.parent = NlTcHandle::CLSACT;
    msg.header.handle = NlTcHandle {
        major: 0xffff,
        minor: 0,
    };
    msg.attributes.push(TcAttribute::Kind("clsact".to_string()));
    msg
}

/// Adds a clsact qdisc to `ifindex`; returns false when one was already there.
pub async fn ensure_clsact(handle: &rtnetlink::Handle, ifindex: u32) -> Result<bool> {
    if has_clsact(handle, ifindex).await? {
        return Ok(false);
    }
    let message = RouteNetlinkMessage::NewQueueDiscipline(clsact_message(ifindex));
    match request_ack(handle, message, NLM_F_CREATE | NLM_F_EXCL).await {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(netlink_error(
            format!("add clsact qdisc to link #{ifindex}"),
            e,
        )),
    }
}

/// Deletes the clsact qdisc of `ifindex` (and with it every filter on it);
/// absent is success.
pub async fn delete_clsact(handle: &rtnetlink::Handle, ifindex: u32) -> Result<()> {
    let message = RouteNetlinkMessage::DelQueueDiscipline(clsact_message(ifindex));
    match request_ack(handle, message, 0).await {
        Ok(()) => Ok(()),
        Err(e) if matches!(errno(&e), Some(libc::ENOENT | libc::EINVAL | libc::ENODEV)) => Ok(()),
        Err(e) => Err(netlink_error(
            format!("delete clsact qdisc of link #{ifindex}"),
            e,
        )),
    }
}

/// Deletes one filter; absent is success.
pub async fn delete_filter(
    handle: &rtnetlink::Handle,
    ifindex: u32,
    hook: Hook,
    priority: u16,
    filter_handle: u32,
) -> Result<()> {
    let mut msg = TcMessage::with_index(ifindex as i32);
    msg.header.parent = hook.parent();
    msg.header.handle = NlTcHandle::from(filter_handle);
    msg.header.info = (u32::from(priority) << 16) | u32::from(ETH_P_ALL_BE);
    msg.attributes.push(TcAttribute::Kind("bpf".to_string()));
    match request_ack(handle, RouteNetlinkMessage::DelTrafficFilter(msg), 0).await {
        Ok(()) => Ok(()),
        Err(e) if matches!(errno(&e), Some(libc::ENOENT | libc::EINVAL | libc::ENODEV)) => Ok(()),
        Err(e) => Err(netlink_error(
            format!(
                "delete tc {} filter pref {priority} handle {filter_handle:#x} of link #{ifindex}",
                hook.as_str()
            ),
            e,
        )),
    }
}

/// Attaches `program` on `interface` at (`priority`, [`TC_HANDLE`]) through
/// netlink: a new filter, or (with `replace`) a new program for the existing
/// filter, swapped atomically by the kernel. The filter outlives the process.
pub fn attach(
    program: &mut SchedClassifier,
    interface: &str,
    hook: Hook,
    priority: u16,
    replace: bool,
) -> Result<()> {
    let context = || {
        format!(
            "attach tc {} filter pref {priority} on {interface}",
            hook.as_str()
        )
    };
    let handle = TcHandle::from(TC_HANDLE);
    let link_id = if replace {
        let link =
            SchedClassifierLink::attached(interface, hook.attach_type(), priority, handle, None)
                .map_err(|e| DataplaneError::other(context(), e))?;
        program.attach_to_link(link)
    } else {
        program.attach_with_options(
            interface,
            hook.attach_type(),
            TcAttachOptions::Netlink(NlOptions {
                priority,
                handle,
                classid: None,
            }),
        )
    }
    .map_err(|e| DataplaneError::other(context(), error_chain(&e)))?;
    let link = program
        .take_link(link_id)
        .map_err(|e| DataplaneError::other(context(), e))?;
    // Dropping the link would detach the filter.
    std::mem::forget(link);
    Ok(())
}

/// An error with its sources, for messages that must say what the kernel said.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_clsact_hooks() {
        assert_eq!(u32::from(Hook::Ingress.parent()), 0xffff_fff2);
        assert_eq!(u32::from(Hook::Egress.parent()), 0xffff_fff3);
        assert_eq!(ETH_P_ALL_BE, 0x0300);
    }
}
