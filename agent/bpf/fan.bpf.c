// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * fan: IPv4-in-IPv4 (RFC 2003, IP protocol 4) encapsulation for a fan network,
 * as tc programs. Wire-compatible with Ubuntu's kernel fan map and with the
 * kernel's own ipip device.
 *
 *   fan_encap  egress of the network's tunnel device (the device the overlay
 *              route points at): adds the outer header, the outer destination
 *              computed from the inner one with the fan formula, and hands the
 *              packet to the underlay with bpf_redirect_neigh. With
 *              anti-spoofing on, an inner source outside our own slice is
 *              dropped here, before it reaches the wire (egress check).
 *   fan_decap  ingress of the underlay device: strips the outer header of
 *              protocol-4 packets for our slice; everything else is left to
 *              the next filter and the stack (TC_ACT_UNSPEC).
 *   fan_fastpath  ingress of each bridge port (host side of a container's
 *              veth) and of the fan bridge itself, for ports not learned
 *              yet (the egress fast path): frames
 *              a container sends to the gateway MAC for a remote slice are
 *              checked as the slow path would (egress anti-spoofing, TTL,
 *              tunnel MTU), encapsulated as fan_encap does and redirected to
 *              the underlay device, skipping the host's routing, FORWARD
 *              chain and the tunnel device. Whatever it does not handle goes
 *              on to the stack unchanged (TC_ACT_OK): the slow path.
 *
 * Where the fast path's CPU goes beyond a plain host-to-host flow (perf, Linux
 * 6.18, fan-bench's two hosts on one kernel; issue 14): the container's veth
 * (one more backlog crossing per skb, ACKs included; a netkit device would
 * run fan_fastpath in the container's xmit and remove it), the route lookup
 * of bpf_redirect_neigh (skipped when the agent finds the whole underlay
 * on-link, FAN_F_UNDERLAY_ON_LINK), the GSO header check each device repeats on the
 * SKB_GSO_DODGY that bpf_skb_adjust_room sets, and, at decap, skb_unclone:
 * adjust_room always copies the head of a cloned skb, and between namespaces
 * of one kernel every TCP data skb is the sender's clone (a NIC hands us
 * fresh ones). Each is 1-2 % of the flow's CPU; the host's conntrack, which
 * the fast path skips, costs about as much as all of them.
 *
 * All parameters come from the fan_config array map, filled by the agent; the
 * programs keep no per-peer state. Every map is pinned by the agent under
 * <pin root>/<network id>/ so a restarted agent finds them again.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/if_packet.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

/* Newer uapi headers have these as enum members, older ones not at all:
 * use our own names so both compile. */
#define FAN_ADJ_ROOM_FIXED_GSO (1ULL << 0)
#define FAN_ADJ_ROOM_ENCAP_L3_IPV4 (1ULL << 1)
/* On kernels that know it, marks the shrink as a decapsulation (Linux 6.3+). */
#define FAN_ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7)

#define FAN_AF_INET 2
#define FAN_IP_MF 0x2000
#define FAN_IP_DF 0x4000
#define FAN_IP_OFFSET 0x1fff
#define FAN_ECN_MASK 3
#define FAN_ECN_CE 3
#define FAN_OUTER_TTL 64

/* fan_config.flags */
#define FAN_F_ENABLED (1U << 0)
#define FAN_F_ANTI_SPOOF (1U << 1)
#define FAN_F_PEER_FASTPATH (1U << 2)
#define FAN_F_EGRESS_FASTPATH (1U << 3)
#define FAN_F_UNDERLAY_ON_LINK (1U << 4)

/* BPF_MTU_CHK_SEGS: check each segment of a GSO packet against the MTU. */
#define FAN_MTU_CHK_SEGS 1

/* Layout shared with agent/dataplane/src/ebpf/maps.rs (FanConfig). Addresses
 * and masks in host byte order, so the formula is plain shifts. */
struct fan_config {
	__u32 overlay_net;
	__u32 overlay_mask;
	__u32 underlay_net;
	__u32 underlay_mask;
	__u32 local_underlay;
	__u32 slice_net;
	__u32 slice_mask;
	__u32 shift; /* underlay prefix - overlay prefix */
	__u32 underlay_ifindex;
	__u32 tunnel_ifindex;
	__u32 flags;
	__u32 agent_flags; /* the agent's bookkeeping, unused here */
	__u8 tunnel_mac[6];
	__u8 pad[2];
	__u8 bridge_mac[6]; /* the gateway MAC containers send to */
	__u8 pad2[2];
};

/* A container reachable by bpf_redirect_peer: the host side of its veth and
 * the MACs the bridge would have used. Shared with maps.rs (Endpoint). */
struct fan_endpoint {
	__u32 ifindex;
	__u8 mac[6];
	__u8 gw_mac[6];
};

/* Counter slots, shared with maps.rs. */
enum {
	FAN_C_ENCAPSULATED = 0,
	FAN_C_DECAPSULATED = 1,
	FAN_C_DROPPED_SPOOFED = 2,
	FAN_C_DROPPED_FRAGMENT = 3,
	FAN_C_DROPPED_OTHER = 4,
	FAN_C_PEER_REDIRECTED = 5,
	FAN_C_DROPPED_SPOOFED_EGRESS = 6,
	FAN_C_FAST_PATH_ENCAPSULATED = 7,
	FAN_C_MAX = 8,
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fan_config);
} fan_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FAN_C_MAX);
	__type(key, __u32);
	__type(value, __u64);
} fan_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32); /* container IPv4, network byte order */
	__type(value, struct fan_endpoint);
} fan_endpoints SEC(".maps");

static __always_inline void count(__u32 slot, __u64 n)
{
	__u64 *c = bpf_map_lookup_elem(&fan_counters, &slot);

	if (c)
		*c += n; /* per-CPU slot: no atomics needed */
}

/* Wire packets, not skbs: a GSO super-packet counts as its segments. */
static __always_inline __u64 segments(struct __sk_buff *skb)
{
	return skb->gso_segs > 1 ? skb->gso_segs : 1;
}

static __always_inline struct fan_config *config(void)
{
	__u32 zero = 0;
	struct fan_config *cfg = bpf_map_lookup_elem(&fan_config, &zero);

	if (!cfg || !(cfg->flags & FAN_F_ENABLED))
		return NULL;
	return cfg;
}

/* The fan formula (reverse direction): the underlay host owning `addr`. */
static __always_inline __u32 owner_of(const struct fan_config *cfg, __u32 addr)
{
	return cfg->underlay_net |
	       (((addr & ~cfg->overlay_mask) >> (cfg->shift & 31)) & ~cfg->underlay_mask);
}

static __always_inline __u16 ip_checksum(const struct iphdr *iph)
{
	const __u16 *w = (const __u16 *)iph;
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < (int)(sizeof(*iph) / 2); i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* A zero bridge_mac (config of an older agent) matches nothing. */
static __always_inline int same_mac(const __u8 *a, const __u8 *b)
{
	return !(b[0] | b[1] | b[2] | b[3] | b[4] | b[5]) ? 0 :
	       a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] &&
		       a[5] == b[5];
}

/* As the kernel's ip_decrease_ttl(): incremental checksum update. */
static __always_inline void decrease_ttl(struct iphdr *iph)
{
	__u32 check = (__u32)iph->check;

	check += (__u32)bpf_htons(0x0100);
	iph->check = (__u16)(check + (check >= 0xFFFF));
	--iph->ttl;
}

/* As the kernel's IP_ECN_set_ce() (RFC 6040 decapsulation). */
static __always_inline void set_ce(struct iphdr *iph)
{
	__u32 ecn = (iph->tos + 1) & FAN_ECN_MASK;
	__u32 check = (__u32)iph->check;

	/* Not-ECT (ecn 1) stays, CE (ecn 0) is already set. */
	if (!(ecn & 2))
		return;
	check += (__u16)bpf_htons(0xFFFB) + (__u16)bpf_htons(ecn);
	iph->check = (__u16)(check + (check >= 0xFFFF));
	iph->tos |= FAN_ECN_CE;
}

/* The outer header, after bpf_skb_adjust_room made room for it behind the
 * Ethernet header. Shared by both encapsulating programs (one wire format). */
static __always_inline int write_outer(struct __sk_buff *skb, const struct fan_config *cfg,
				       __u32 remote, __u8 tos, __u16 frag_off)
{
	struct iphdr outer = {};

	outer.version = 4;
	outer.ihl = 5;
	/* ECN as the kernel's ip tunnels do (INET_ECN_encapsulate, DSCP 0). */
	outer.tos = (tos & FAN_ECN_MASK) == FAN_ECN_CE ? 2 : (tos & FAN_ECN_MASK);
	/* A BIG TCP super-packet (gso_ipv4_max_size above 64 KB) carries 0, as
	 * the kernel's iph_set_totlen() writes: the stack then takes the length
	 * from the skb, where 0xffff would truncate it. Segmentation writes the
	 * real length of each segment. */
	outer.tot_len = skb->len - ETH_HLEN > 0xffff ? 0 : bpf_htons(skb->len - ETH_HLEN);
	outer.id = frag_off ? 0 : (__u16)bpf_get_prandom_u32();
	outer.frag_off = frag_off;
	outer.ttl = FAN_OUTER_TTL;
	outer.protocol = IPPROTO_IPIP;
	outer.saddr = bpf_htonl(cfg->local_underlay);
	outer.daddr = bpf_htonl(remote);
	outer.check = ip_checksum(&outer);
	return bpf_skb_store_bytes(skb, ETH_HLEN, &outer, sizeof(outer), 0);
}

/* The remote host owning overlay address `dst` (host order), or 0 when it is
 * not for another host: outside the overlay, in our own slice, or in the
 * slice of the underlay's network or broadcast address. */
static __always_inline __u32 remote_of(const struct fan_config *cfg, __u32 dst)
{
	__u32 remote, hostbits;

	if ((dst & cfg->overlay_mask) != cfg->overlay_net ||
	    (dst & cfg->slice_mask) == cfg->slice_net)
		return 0;
	remote = owner_of(cfg, dst);
	hostbits = remote & ~cfg->underlay_mask;
	if (hostbits == 0 || hostbits == ~cfg->underlay_mask || remote == cfg->local_underlay)
		return 0;
	return remote;
}

SEC("classifier/fan_encap")
int fan_encap(struct __sk_buff *skb)
{
	struct fan_config *cfg = config();
	void *data, *data_end;
	struct iphdr *inner;
	__u32 remote;
	__u64 segs = segments(skb);
	__u16 frag_off;
	__u8 tos;

	/* The tunnel device carries nothing but overlay IPv4: whatever is not
	 * encapsulated is dropped, never handed to the veth peer. */
	if (!cfg || skb->protocol != bpf_htons(ETH_P_IP))
		goto drop;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	if (data + ETH_HLEN + sizeof(*inner) > data_end) {
		/* Headers not in the linear part (rare on egress): pull them. */
		if (bpf_skb_pull_data(skb, ETH_HLEN + sizeof(*inner)))
			goto drop;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
	}
	inner = data + ETH_HLEN;
	if ((void *)(inner + 1) > data_end || inner->version != 4 || inner->ihl < 5)
		goto drop;

	/* Egress anti-spoofing: only our own slice may leave this host. The
	 * receiver's check alone is not enough: ipip/kernel-fan receivers and
	 * receivers with anti-spoofing off accept whatever arrives. */
	if ((cfg->flags & FAN_F_ANTI_SPOOF) &&
	    (bpf_ntohl(inner->saddr) & cfg->slice_mask) != cfg->slice_net) {
		count(FAN_C_DROPPED_SPOOFED_EGRESS, segs);
		return TC_ACT_SHOT;
	}

	remote = remote_of(cfg, bpf_ntohl(inner->daddr));
	if (!remote)
		goto drop;

	tos = inner->tos;
	frag_off = inner->frag_off & bpf_htons(FAN_IP_DF);

	if (bpf_skb_adjust_room(skb, sizeof(struct iphdr), BPF_ADJ_ROOM_MAC,
				FAN_ADJ_ROOM_FIXED_GSO | FAN_ADJ_ROOM_ENCAP_L3_IPV4))
		goto drop;

	if (write_outer(skb, cfg, remote, tos, frag_off))
		goto drop;

	count(FAN_C_ENCAPSULATED, segs);
	/* Let the kernel route the outer header and resolve the neighbour: an
	 * explicit nexthop would lose packets sent while ARP is pending. */
	return bpf_redirect_neigh(cfg->underlay_ifindex, NULL, 0, 0);

drop:
	count(FAN_C_DROPPED_OTHER, segs);
	return TC_ACT_SHOT;
}

SEC("classifier/fan_decap")
int fan_decap(struct __sk_buff *skb)
{
	struct fan_config *cfg;
	void *data, *data_end;
	struct ethhdr *eth;
	struct iphdr *outer, *inner;
	struct fan_endpoint *ep;
	__u32 idst, isrc, osrc, ohost, daddr_be;
	__u64 segs = segments(skb);
	__u8 outer_tos;
	const __u32 need = ETH_HLEN + 2 * sizeof(struct iphdr);

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return TC_ACT_UNSPEC;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	if (data + need > data_end) {
		if (bpf_skb_pull_data(skb, need))
			return TC_ACT_UNSPEC;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
	}
	outer = data + ETH_HLEN;
	if ((void *)(outer + 1) > data_end || outer->protocol != IPPROTO_IPIP)
		return TC_ACT_UNSPEC;
	cfg = config();
	if (!cfg || bpf_ntohl(outer->daddr) != cfg->local_underlay)
		return TC_ACT_UNSPEC;
	/* tc sees fragments before reassembly; no ipip module will take them. */
	if (outer->frag_off & bpf_htons(FAN_IP_MF | FAN_IP_OFFSET)) {
		count(FAN_C_DROPPED_FRAGMENT, segs);
		return TC_ACT_SHOT;
	}
	/* Outer options: nobody sends them; let the stack decide (not counted:
	 * we drop nothing). */
	if (outer->ihl != 5)
		return TC_ACT_UNSPEC;
	inner = (void *)(outer + 1);
	if ((void *)(inner + 1) > data_end || inner->version != 4 || inner->ihl < 5)
		return TC_ACT_UNSPEC;
	idst = bpf_ntohl(inner->daddr);
	/* Another network's slice (several fans may share an underlay). */
	if ((idst & cfg->slice_mask) != cfg->slice_net)
		return TC_ACT_UNSPEC;

	if (cfg->flags & FAN_F_ANTI_SPOOF) {
		isrc = bpf_ntohl(inner->saddr);
		osrc = bpf_ntohl(outer->saddr);
		ohost = osrc & ~cfg->underlay_mask;
		/* The underlay's network and broadcast addresses are no host's
		 * (encap never sends to their slices), though the formula maps
		 * their slices back to them. */
		if (ohost == 0 || ohost == ~cfg->underlay_mask ||
		    (isrc & cfg->overlay_mask) != cfg->overlay_net ||
		    owner_of(cfg, isrc) != osrc) {
			count(FAN_C_DROPPED_SPOOFED, segs);
			return TC_ACT_SHOT;
		}
	}
	outer_tos = outer->tos;
	daddr_be = inner->daddr;

	/* FIXED_GSO: keep gso_size, or the forwarding MTU check fails. Try the
	 * decap flag first; kernels without it reject the call. */
	if (bpf_skb_adjust_room(skb, -(__s32)sizeof(struct iphdr), BPF_ADJ_ROOM_MAC,
				FAN_ADJ_ROOM_FIXED_GSO | FAN_ADJ_ROOM_DECAP_L3_IPV4) &&
	    bpf_skb_adjust_room(skb, -(__s32)sizeof(struct iphdr), BPF_ADJ_ROOM_MAC,
				FAN_ADJ_ROOM_FIXED_GSO)) {
		count(FAN_C_DROPPED_OTHER, segs);
		return TC_ACT_SHOT;
	}
	count(FAN_C_DECAPSULATED, segs);

	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	inner = data + ETH_HLEN;
	if ((void *)(inner + 1) > data_end)
		return TC_ACT_SHOT;
	if ((outer_tos & FAN_ECN_MASK) == FAN_ECN_CE)
		set_ce(inner);

	/* Fast path: straight into the container's namespace. Skips the host's
	 * routing, FORWARD chain and bridge (and with them the software
	 * segmentation the stale tunnel GSO state would cause there). */
	if (cfg->flags & FAN_F_PEER_FASTPATH) {
		ep = bpf_map_lookup_elem(&fan_endpoints, &daddr_be);
		if (ep && inner->ttl > 1) {
			decrease_ttl(inner);
			__builtin_memcpy(eth->h_dest, ep->mac, ETH_ALEN);
			__builtin_memcpy(eth->h_source, ep->gw_mac, ETH_ALEN);
			count(FAN_C_PEER_REDIRECTED, segs);
			return bpf_redirect_peer(ep->ifindex, 0);
		}
	}

	/* Slow path: the packet enters the stack as if received on the tunnel
	 * device, like packets from an ipip device: the reverse route of the
	 * inner source is that device, so strict rp_filter accepts it, and
	 * firewall rules see the fan device as input interface. */
	if (cfg->tunnel_ifindex) {
		__builtin_memcpy(eth->h_dest, cfg->tunnel_mac, ETH_ALEN);
		return bpf_redirect(cfg->tunnel_ifindex, BPF_F_INGRESS);
	}
	return TC_ACT_OK;
}

SEC("classifier/fan_fastpath")
int fan_fastpath(struct __sk_buff *skb)
{
	struct fan_config *cfg;
	void *data, *data_end;
	struct ethhdr *eth;
	struct iphdr *iph;
	__u32 remote, mtu_len = 0;
	__u64 segs;
	__u16 frag_off;
	__u8 tos;
	const __u32 need = ETH_HLEN + sizeof(struct iphdr);

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	cfg = config();
	if (!cfg || !(cfg->flags & FAN_F_EGRESS_FASTPATH))
		return TC_ACT_OK;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	if (data + need > data_end) {
		if (bpf_skb_pull_data(skb, need))
			return TC_ACT_OK;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
	}
	eth = data;
	iph = data + ETH_HLEN;
	if ((void *)(iph + 1) > data_end)
		return TC_ACT_OK;
	/* Only frames to the bridge's own (gateway) MAC: on the bridge those
	 * are PACKET_HOST, on a port the destination MAC says it (the port's
	 * own MAC is another). Frames between containers are bridged (or go
	 * on to the bridge from a port); broadcasts (ARP) go on to the stack. */
	if (skb->pkt_type != PACKET_HOST && !same_mac(eth->h_dest, cfg->bridge_mac))
		return TC_ACT_OK;
	/* IP options and fragments: the slow path (the kernel's forwarding
	 * code handles both). */
	if (iph->version != 4 || iph->ihl != 5 ||
	    (iph->frag_off & bpf_htons(FAN_IP_MF | FAN_IP_OFFSET)))
		return TC_ACT_OK;
	/* Not for another host's slice (the outside, to be masqueraded; our
	 * own slice; no host): the stack decides, as before. */
	remote = remote_of(cfg, bpf_ntohl(iph->daddr));
	if (!remote)
		return TC_ACT_OK;

	segs = segments(skb);
	/* The same egress check, and counter, as fan_encap. */
	if ((cfg->flags & FAN_F_ANTI_SPOOF) &&
	    (bpf_ntohl(iph->saddr) & cfg->slice_mask) != cfg->slice_net) {
		count(FAN_C_DROPPED_SPOOFED_EGRESS, segs);
		return TC_ACT_SHOT;
	}
	/* TTL expiring here: the stack sends ICMP time exceeded. */
	if (iph->ttl <= 1)
		return TC_ACT_OK;
	/* Larger than the tunnel device's MTU (each segment of a GSO packet):
	 * the stack sends ICMP fragmentation needed (DF) or fragments. */
	if (bpf_check_mtu(skb, cfg->tunnel_ifindex, &mtu_len, 0, FAN_MTU_CHK_SEGS))
		return TC_ACT_OK;

	tos = iph->tos;
	frag_off = iph->frag_off & bpf_htons(FAN_IP_DF);
	/* On failure the packet is unchanged: the slow path can still take it. */
	if (bpf_skb_adjust_room(skb, sizeof(struct iphdr), BPF_ADJ_ROOM_MAC,
				FAN_ADJ_ROOM_FIXED_GSO | FAN_ADJ_ROOM_ENCAP_L3_IPV4))
		return TC_ACT_OK;
	if (write_outer(skb, cfg, remote, tos, frag_off))
		goto drop;
	/* As forwarding would: one hop (the inner header now follows the outer). */
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	iph = data + ETH_HLEN + sizeof(struct iphdr);
	if ((void *)(iph + 1) > data_end)
		goto drop;
	decrease_ttl(iph);

	count(FAN_C_ENCAPSULATED, segs);
	count(FAN_C_FAST_PATH_ENCAPSULATED, segs);
	/* The agent found every underlay host on-link out of this device: the
	 * remote host is the next hop, and the kernel skips its route lookup
	 * (the neighbour is still resolved as before). */
	if (cfg->flags & FAN_F_UNDERLAY_ON_LINK) {
		struct bpf_redir_neigh nh = {
			.nh_family = FAN_AF_INET,
			.ipv4_nh = bpf_htonl(remote),
		};
		return bpf_redirect_neigh(cfg->underlay_ifindex, &nh, sizeof(nh), 0);
	}
	return bpf_redirect_neigh(cfg->underlay_ifindex, NULL, 0, 0);

drop:
	count(FAN_C_DROPPED_OTHER, segs);
	return TC_ACT_SHOT;
}

char _license[] SEC("license") = "GPL";
