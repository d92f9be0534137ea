//! nf_tables netlink messages, encoded (no I/O here: the transaction is
//! sent by [`super::nft_transaction`]).
//!
//! A [`Batch`] is one nf_tables transaction: NFNL_MSG_BATCH_BEGIN, the
//! messages, NFNL_MSG_BATCH_END. The kernel applies it as a whole or not
//! at all, and it moves the ruleset generation by one.
//!
//! Everything is encoded exactly as nft 1.0.6 encodes the same commands
//! (attribute order, registers, the anonymous set's user data), seen with
//! `nft --debug=mnl`, so `nft list` shows our tables as it shows its own.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

const NLMSG_HDRLEN: usize = 16;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFPROTO_IPV4: u8 = 2;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_NEWSETELEM: u16 = 12;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;

const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;

const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;

const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DESC: u16 = 9;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_USERDATA: u16 = 13;
const NFTA_SET_DESC_SIZE: u16 = 1;
const NFT_SET_ANONYMOUS: u32 = 0x1;
const NFT_SET_CONSTANT: u32 = 0x2;
/// nft's `ipv4_addr` datatype.
const TYPE_IPV4_ADDR: u32 = 7;

const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
const NFTA_SET_ELEM_KEY: u16 = 1;

/// The name an anonymous set is created under; the kernel replaces `%d`.
pub const ANONYMOUS_SET_NAME: &str = "__set%d";

/// nft 1.0.6's user data for a set keyed by `ip saddr` (libnftnl udata
/// TLVs: key byte order big-endian, then the key's `typeof`: payload, ip
/// header, field saddr). nft reads it back when it lists the set.
const IP_SADDR_SET_USERDATA: [u8; 28] = [
    0x00, 0x04, 0x02, 0x00, 0x00, 0x00, 0x03, 0x14, 0x00, 0x04, 0x07, 0x00, 0x00, 0x00, 0x01, 0x0c,
    0x00, 0x04, 0x0c, 0x00, 0x00, 0x00, 0x01, 0x04, 0x0b, 0x00, 0x00, 0x00,
];

/// Netfilter hooks of the ip family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// NF_INET_PRE_ROUTING.
    Prerouting = 0,
    /// NF_INET_FORWARD.
    Forward = 2,
    /// NF_INET_POST_ROUTING.
    Postrouting = 4,
}

/// The IPv4 header fields the agent's rules match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpField {
    /// `ip protocol` (1 byte at offset 9).
    Protocol,
    /// `ip saddr` (4 bytes at offset 12).
    Saddr,
    /// `ip daddr` (4 bytes at offset 16).
    Daddr,
}

impl IpField {
    fn offset(self) -> u32 {
        match self {
            IpField::Protocol => 9,
            IpField::Saddr => 12,
            IpField::Daddr => 16,
        }
    }
}

/// Comparison of a `cmp` expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// NFT_CMP_EQ.
    Eq = 0,
    /// NFT_CMP_NEQ.
    Neq = 1,
}

/// One nf_tables expression, as nft 1.0.6 emits it (register 1 for data,
/// register 0 for the verdict).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// `payload load len @ network header + offset => reg 1`.
    Payload {
        /// Byte offset in the IPv4 header.
        offset: u32,
        /// Bytes loaded.
        len: u32,
    },
    /// `cmp op reg 1 data`.
    Cmp {
        /// Equal or not.
        op: CmpOp,
        /// Compared bytes (as many as loaded).
        data: Vec<u8>,
    },
    /// `bitwise reg 1 = (reg 1 & mask) ^ 0` on `mask.len()` bytes.
    Bitwise {
        /// The mask.
        mask: Vec<u8>,
    },
    /// `meta load iifname => reg 1`.
    MetaIifname,
    /// `lookup reg 1 set name` (the set added in the same batch with `set_id`).
    Lookup {
        /// The set's name as sent (the anonymous name template).
        set: String,
        /// The set's id in the batch.
        set_id: u32,
    },
    /// `counter`.
    Counter,
    /// `immediate reg 0 drop`.
    Drop,
    /// `masq`.
    Masquerade,
}

impl Expr {
    /// The expressions nft emits for `ip field [!=] net/len`: a byte-aligned
    /// prefix loads (and compares) only its bytes, another loads all four,
    /// masks them, and compares.
    pub fn prefix_match(field: IpField, op: CmpOp, net: Ipv4Network) -> Vec<Expr> {
        let prefix = u32::from(net.prefix());
        let addr = net.network().octets();
        if prefix % 8 == 0 && prefix > 0 {
            let len = prefix / 8;
            vec![
                Expr::Payload {
                    offset: field.offset(),
                    len,
                },
                Expr::Cmp {
                    op,
                    data: addr[..len as usize].to_vec(),
                },
            ]
        } else {
            vec![
                Expr::Payload {
                    offset: field.offset(),
                    len: 4,
                },
                Expr::Bitwise {
                    mask: net.mask().octets().to_vec(),
                },
                Expr::Cmp {
                    op,
                    data: addr.to_vec(),
                },
            ]
        }
    }

    /// `iifname "name"`: the name NUL-padded to IFNAMSIZ (16) bytes.
    pub fn iifname_match(name: &str) -> Vec<Expr> {
        let mut data = name.as_bytes().to_vec();
        data.resize(16, 0);
        vec![
            Expr::MetaIifname,
            Expr::Cmp {
                op: CmpOp::Eq,
                data,
            },
        ]
    }

    /// `ip protocol N`.
    pub fn ip_protocol_match(protocol: u8) -> Vec<Expr> {
        vec![
            Expr::Payload {
                offset: IpField::Protocol.offset(),
                len: 1,
            },
            Expr::Cmp {
                op: CmpOp::Eq,
                data: vec![protocol],
            },
        ]
    }

    /// `ip field { … }`: the field's 4 bytes looked up in the anonymous
    /// set added in the same batch with `set_id`.
    pub fn set_lookup(field: IpField, set_id: u32) -> Vec<Expr> {
        vec![
            Expr::Payload {
                offset: field.offset(),
                len: 4,
            },
            Expr::Lookup {
                set: ANONYMOUS_SET_NAME.into(),
                set_id,
            },
        ]
    }

    fn encode(&self, a: &mut Attrs) {
        const NFT_REG_VERDICT: u32 = 0;
        const NFT_REG_1: u32 = 1;
        const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
        const NFT_META_IIFNAME: u32 = 6;
        const NF_DROP: u32 = 0;
        let name = match self {
            Expr::Payload { .. } => "payload",
            Expr::Cmp { .. } => "cmp",
            Expr::Bitwise { .. } => "bitwise",
            Expr::MetaIifname => "meta",
            Expr::Lookup { .. } => "lookup",
            Expr::Counter => "counter",
            Expr::Drop => "immediate",
            Expr::Masquerade => "masq",
        };
        a.nested(NFTA_LIST_ELEM, |a| {
            a.str(NFTA_EXPR_NAME, name);
            a.nested(NFTA_EXPR_DATA, |a| match self {
                Expr::Payload { offset, len } => {
                    a.u32(1, NFT_REG_1); // NFTA_PAYLOAD_DREG
                    a.u32(2, NFT_PAYLOAD_NETWORK_HEADER); // NFTA_PAYLOAD_BASE
                    a.u32(3, *offset); // NFTA_PAYLOAD_OFFSET
                    a.u32(4, *len); // NFTA_PAYLOAD_LEN
                }
                Expr::Cmp { op, data } => {
                    a.u32(1, NFT_REG_1); // NFTA_CMP_SREG
                    a.u32(2, *op as u32); // NFTA_CMP_OP
                    a.nested(3, |a| a.put(NFTA_DATA_VALUE, data)); // NFTA_CMP_DATA
                }
                Expr::Bitwise { mask } => {
                    a.u32(1, NFT_REG_1); // NFTA_BITWISE_SREG
                    a.u32(2, NFT_REG_1); // NFTA_BITWISE_DREG
                    a.u32(3, mask.len() as u32); // NFTA_BITWISE_LEN
                    a.nested(4, |a| a.put(NFTA_DATA_VALUE, mask)); // NFTA_BITWISE_MASK
                    let xor = vec![0u8; mask.len()];
                    a.nested(5, |a| a.put(NFTA_DATA_VALUE, &xor)); // NFTA_BITWISE_XOR
                }
                Expr::MetaIifname => {
                    a.u32(2, NFT_META_IIFNAME); // NFTA_META_KEY
                    a.u32(1, NFT_REG_1); // NFTA_META_DREG
                }
                Expr::Lookup { set, set_id } => {
                    a.u32(2, NFT_REG_1); // NFTA_LOOKUP_SREG
                    a.str(1, set); // NFTA_LOOKUP_SET
                    a.u32(4, *set_id); // NFTA_LOOKUP_SET_ID
                }
                Expr::Counter | Expr::Masquerade => {}
                Expr::Drop => {
                    a.u32(1, NFT_REG_VERDICT); // NFTA_IMMEDIATE_DREG
                    a.nested(2, |a| {
                        // NFTA_IMMEDIATE_DATA
                        a.nested(NFTA_DATA_VERDICT, |a| a.u32(NFTA_VERDICT_CODE, NF_DROP));
                    });
                }
            });
        });
    }
}

/// A base chain: `type kind hook hook priority prio; policy accept;`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseChain {
    /// The chain's name.
    pub name: String,
    /// "filter" or "nat".
    pub kind: String,
    /// Where it hooks.
    pub hook: Hook,
    /// Its priority (filter 0, srcnat 100).
    pub priority: i32,
}

/// Netlink attributes being written (each padded to 4 bytes).
#[derive(Debug, Default)]
struct Attrs(Vec<u8>);

impl Attrs {
    fn put(&mut self, kind: u16, value: &[u8]) {
        let len = 4 + value.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(value);
        self.pad();
    }

    fn pad(&mut self) {
        self.0.resize((self.0.len() + 3) & !3, 0);
    }

    /// A string attribute, NUL-terminated.
    fn str(&mut self, kind: u16, value: &str) {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.put(kind, &bytes);
    }

    /// A 32-bit attribute in network byte order (as nf_tables wants them).
    fn u32(&mut self, kind: u16, value: u32) {
        self.put(kind, &value.to_be_bytes());
    }

    /// A nested attribute: its length covers the (padded) inner ones.
    fn nested(&mut self, kind: u16, inner: impl FnOnce(&mut Attrs)) {
        let start = self.0.len();
        self.0.extend_from_slice(&[0; 4]);
        inner(self);
        let len = (self.0.len() - start) as u16;
        self.0[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self.0[start + 2..start + 4].copy_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    }
}

/// One message of a batch, without its sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Message {
    kind: u16,
    flags: u16,
    attrs: Vec<u8>,
}

/// The messages of one nf_tables transaction (family `ip`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    messages: Vec<Message>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Batch::default()
    }

    /// The number of messages between batch begin and end.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// True when the batch holds no message.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    fn push(&mut self, kind: u16, flags: u16, attrs: Attrs) {
        self.messages.push(Message {
            kind,
            flags,
            attrs: attrs.0,
        });
    }

    /// NEWTABLE: `add table ip name` or, when `exclusive`, `create table`
    /// (NLM_F_EXCL: the transaction fails with EEXIST if the table exists).
    pub fn new_table(&mut self, name: &str, exclusive: bool) {
        let mut a = Attrs::default();
        a.str(NFTA_TABLE_NAME, name);
        a.u32(NFTA_TABLE_FLAGS, 0);
        let flags = if exclusive {
            NLM_F_CREATE | NLM_F_EXCL
        } else {
            NLM_F_CREATE
        };
        self.push(NFT_MSG_NEWTABLE, flags, a);
    }

    /// DELTABLE: `delete table ip name` (with its chains, rules and sets).
    pub fn delete_table(&mut self, name: &str) {
        let mut a = Attrs::default();
        a.str(NFTA_TABLE_NAME, name);
        self.push(NFT_MSG_DELTABLE, 0, a);
    }

    /// NEWCHAIN: a base chain with policy accept.
    pub fn new_chain(&mut self, table: &str, chain: &BaseChain) {
        const NF_ACCEPT: u32 = 1;
        let mut a = Attrs::default();
        a.str(NFTA_CHAIN_TABLE, table);
        a.str(NFTA_CHAIN_NAME, &chain.name);
        a.str(NFTA_CHAIN_TYPE, &chain.kind);
        a.u32(NFTA_CHAIN_POLICY, NF_ACCEPT);
        a.nested(NFTA_CHAIN_HOOK, |a| {
            a.u32(NFTA_HOOK_HOOKNUM, chain.hook as u32);
            a.put(NFTA_HOOK_PRIORITY, &chain.priority.to_be_bytes());
        });
        self.push(NFT_MSG_NEWCHAIN, NLM_F_CREATE, a);
    }

    /// NEWSET + NEWSETELEM: an anonymous constant set of IPv4 addresses
    /// (keyed as `ip saddr`), referred to by [`Expr::Lookup`] with
    /// [`ANONYMOUS_SET_NAME`] and `id` in the same batch.
    pub fn new_anonymous_addr_set(&mut self, table: &str, id: u32, elements: &[Ipv4Addr]) {
        let mut a = Attrs::default();
        a.str(NFTA_SET_TABLE, table);
        a.str(NFTA_SET_NAME, ANONYMOUS_SET_NAME);
        a.u32(NFTA_SET_FLAGS, NFT_SET_ANONYMOUS | NFT_SET_CONSTANT);
        a.u32(NFTA_SET_KEY_TYPE, TYPE_IPV4_ADDR);
        a.u32(NFTA_SET_KEY_LEN, 4);
        a.u32(NFTA_SET_ID, id);
        a.nested(NFTA_SET_DESC, |a| {
            a.u32(NFTA_SET_DESC_SIZE, elements.len() as u32)
        });
        a.put(NFTA_SET_USERDATA, &IP_SADDR_SET_USERDATA);
        self.push(NFT_MSG_NEWSET, NLM_F_CREATE, a);

        let mut a = Attrs::default();
        a.str(NFTA_SET_ELEM_LIST_TABLE, table);
        a.str(NFTA_SET_ELEM_LIST_SET, ANONYMOUS_SET_NAME);
        a.u32(NFTA_SET_ELEM_LIST_SET_ID, id);
        a.nested(NFTA_SET_ELEM_LIST_ELEMENTS, |a| {
            for element in elements {
                a.nested(NFTA_LIST_ELEM, |a| {
                    a.nested(NFTA_SET_ELEM_KEY, |a| {
                        a.put(NFTA_DATA_VALUE, &element.octets())
                    })
                });
            }
        });
        self.push(NFT_MSG_NEWSETELEM, NLM_F_CREATE, a);
    }

    /// NEWRULE: `add rule ip table chain exprs` (appended).
    pub fn new_rule(&mut self, table: &str, chain: &str, exprs: &[Expr]) {
        let mut a = Attrs::default();
        a.str(NFTA_RULE_TABLE, table);
        a.str(NFTA_RULE_CHAIN, chain);
        a.nested(NFTA_RULE_EXPRESSIONS, |a| {
            for expr in exprs {
                expr.encode(a);
            }
        });
        self.push(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, a);
    }

    /// The whole transaction as one datagram: batch begin with sequence
    /// number `seq`, the messages with `seq + 1 ..` (each asking for an
    /// ack), batch end. Returns the bytes.
    pub fn encode(&self, seq: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let subsys = NFNL_SUBSYS_NFTABLES.to_be_bytes();
        header(
            &mut out,
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            seq,
            0,
            subsys,
            &[],
        );
        for (i, m) in self.messages.iter().enumerate() {
            header(
                &mut out,
                (NFNL_SUBSYS_NFTABLES << 8) | m.kind,
                NLM_F_REQUEST | NLM_F_ACK | m.flags,
                seq.wrapping_add(1 + i as u32),
                NFPROTO_IPV4,
                [0, 0],
                &m.attrs,
            );
        }
        let end = seq.wrapping_add(1 + self.messages.len() as u32);
        header(
            &mut out,
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            end,
            0,
            subsys,
            &[],
        );
        out
    }
}

/// Appends nlmsghdr + struct nfgenmsg { family, version 0, res_id } + attrs.
fn header(
    out: &mut Vec<u8>,
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: [u8; 2],
    attrs: &[u8],
) {
    let len = NLMSG_HDRLEN + 4 + attrs.len();
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&[family, 0, res_id[0], res_id[1]]);
    out.extend_from_slice(attrs);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (len, type) of each attribute at `data`, with its value.
    fn attrs(data: &[u8]) -> Vec<(u16, &[u8])> {
        let mut out = Vec::new();
        let mut offset = 0;
        while offset + 4 <= data.len() {
            let len = usize::from(u16::from_ne_bytes([data[offset], data[offset + 1]]));
            let kind = u16::from_ne_bytes([data[offset + 2], data[offset + 3]]);
            assert!(len >= 4 && offset + len <= data.len(), "attribute fits");
            out.push((kind, &data[offset + 4..offset + len]));
            offset += (len + 3) & !3;
        }
        assert_eq!(offset, data.len(), "attributes end at the payload's end");
        out
    }

    /// One message of a datagram: type, flags, seq, nfgenmsg, attributes.
    type Parsed<'a> = (u16, u16, u32, [u8; 4], &'a [u8]);

    /// Every message of a datagram.
    fn messages(data: &[u8]) -> Vec<Parsed<'_>> {
        let mut out = Vec::new();
        let mut offset = 0;
        while offset < data.len() {
            let h = &data[offset..];
            let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
            assert_eq!(len % 4, 0, "messages stay 4-byte aligned");
            out.push((
                u16::from_ne_bytes([h[4], h[5]]),
                u16::from_ne_bytes([h[6], h[7]]),
                u32::from_ne_bytes([h[8], h[9], h[10], h[11]]),
                [h[16], h[17], h[18], h[19]],
                &h[20..len],
            ));
            offset += len;
        }
        assert_eq!(offset, data.len());
        out
    }

    #[test]
    fn a_batch_is_framed_by_begin_and_end_with_consecutive_sequence_numbers() {
        let mut batch = Batch::new();
        batch.new_table("fan_x", true);
        batch.delete_table("fan_x");
        let data = batch.encode(41);
        let m = messages(&data);
        assert_eq!(m.len(), 4);
        // Begin and end: res_id NFNL_SUBSYS_NFTABLES (big-endian), no ack.
        assert_eq!(
            (m[0].0, m[0].1, m[0].2, m[0].3),
            (0x10, 1, 41, [0, 0, 0, 10])
        );
        assert_eq!(
            (m[3].0, m[3].1, m[3].2, m[3].3),
            (0x11, 1, 44, [0, 0, 0, 10])
        );
        // create table: NEWTABLE with REQUEST|ACK|CREATE|EXCL, family ip.
        assert_eq!(
            (m[1].0, m[1].1, m[1].2, m[1].3),
            (0x0a00, 0x605, 42, [2, 0, 0, 0])
        );
        assert_eq!(
            attrs(m[1].4),
            vec![(1, &b"fan_x\0"[..]), (2, &[0, 0, 0, 0][..])]
        );
        assert_eq!((m[2].0, m[2].1, m[2].2), (0x0a02, 0x5, 43));
        assert_eq!(attrs(m[2].4), vec![(1, &b"fan_x\0"[..])]);
        // "add": no EXCL.
        let mut add = Batch::new();
        add.new_table("t", false);
        assert_eq!(messages(&add.encode(1))[1].1, 0x405);
    }

    #[test]
    fn strings_are_nul_terminated_and_padded() {
        let mut a = Attrs::default();
        a.str(1, "fan_x");
        // len 4 + 6, padded to 12.
        assert_eq!(a.0, [10, 0, 1, 0, b'f', b'a', b'n', b'_', b'x', 0, 0, 0]);
        let mut a = Attrs::default();
        a.str(1, "abc");
        assert_eq!(a.0, [8, 0, 1, 0, b'a', b'b', b'c', 0]);
    }

    #[test]
    fn base_chains_carry_type_policy_and_hook() {
        let mut batch = Batch::new();
        batch.new_chain(
            "fan_x",
            &BaseChain {
                name: "postrouting".into(),
                kind: "nat".into(),
                hook: Hook::Postrouting,
                priority: 100,
            },
        );
        let data = batch.encode(1);
        let m = &messages(&data)[1];
        assert_eq!((m.0, m.1), (0x0a03, 0x405));
        let a = attrs(m.4);
        let kinds: Vec<u16> = a.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, vec![1, 3, 7, 5, 4 | NLA_F_NESTED]);
        assert_eq!(a[1].1, b"postrouting\0");
        assert_eq!(a[2].1, b"nat\0");
        assert_eq!(a[3].1, [0, 0, 0, 1]);
        assert_eq!(
            attrs(a[4].1),
            vec![(1, &[0, 0, 0, 4][..]), (2, &[0, 0, 0, 100][..])]
        );
    }

    #[test]
    fn byte_aligned_prefixes_compare_only_their_bytes() {
        let net = |s: &str| s.parse::<Ipv4Network>().unwrap();
        assert_eq!(
            Expr::prefix_match(IpField::Saddr, CmpOp::Eq, net("250.0.28.0/24")),
            vec![
                Expr::Payload { offset: 12, len: 3 },
                Expr::Cmp {
                    op: CmpOp::Eq,
                    data: vec![250, 0, 28]
                }
            ]
        );
        assert_eq!(
            Expr::prefix_match(IpField::Daddr, CmpOp::Neq, net("250.0.0.0/8")),
            vec![
                Expr::Payload { offset: 16, len: 1 },
                Expr::Cmp {
                    op: CmpOp::Neq,
                    data: vec![250]
                }
            ]
        );
        assert_eq!(
            Expr::prefix_match(IpField::Daddr, CmpOp::Eq, net("10.1.2.3/32")).len(),
            2
        );
    }

    #[test]
    fn other_prefixes_are_masked_on_four_bytes() {
        let net = |s: &str| s.parse::<Ipv4Network>().unwrap();
        assert_eq!(
            Expr::prefix_match(IpField::Saddr, CmpOp::Neq, net("250.0.28.16/28")),
            vec![
                Expr::Payload { offset: 12, len: 4 },
                Expr::Bitwise {
                    mask: vec![255, 255, 255, 240]
                },
                Expr::Cmp {
                    op: CmpOp::Neq,
                    data: vec![250, 0, 28, 16]
                }
            ]
        );
        assert_eq!(
            Expr::prefix_match(IpField::Daddr, CmpOp::Eq, net("250.0.0.0/12"))[1],
            Expr::Bitwise {
                mask: vec![255, 240, 0, 0]
            }
        );
    }

    /// The bytes nft 1.0.6 sends for `ip saddr 250.0.28.0/24 ip daddr !=
    /// 250.0.0.0/12 masquerade` (from `nft --debug=mnl`), attribute by attribute.
    #[test]
    fn a_masquerade_rule_is_encoded_as_nft_does() {
        let mut exprs =
            Expr::prefix_match(IpField::Saddr, CmpOp::Eq, "250.0.28.0/24".parse().unwrap());
        exprs.extend(Expr::prefix_match(
            IpField::Daddr,
            CmpOp::Neq,
            "250.0.0.0/12".parse().unwrap(),
        ));
        exprs.push(Expr::Masquerade);
        let mut batch = Batch::new();
        batch.new_rule("fan_x", "postrouting", &exprs);
        let data = batch.encode(1);
        let m = &messages(&data)[1];
        assert_eq!((m.0, m.1), (0x0a06, 0xc05));
        let a = attrs(m.4);
        assert_eq!(a[0].1, b"fan_x\0");
        assert_eq!(a[1].1, b"postrouting\0");
        // nft: expressions 284 bytes.
        assert_eq!(a[2].0, 4 | NLA_F_NESTED);
        assert_eq!(a[2].1.len() + 4, 284);
        let list = attrs(a[2].1);
        let sizes: Vec<usize> = list.iter().map(|(_, v)| v.len() + 4).collect();
        // payload, cmp (3 bytes), payload, bitwise, cmp, masq.
        assert_eq!(sizes, vec![52, 44, 52, 68, 44, 20]);
        let cmp = attrs(list[1].1);
        assert_eq!(cmp[0].1, b"cmp\0");
        let cmp_data = attrs(cmp[1].1);
        assert_eq!(cmp_data[1].1, [0, 0, 0, 0]); // NFT_CMP_EQ
        assert_eq!(attrs(cmp_data[2].1), vec![(1, &[250, 0, 28][..])]);
        let bitwise = attrs(attrs(list[3].1)[1].1);
        let kinds: Vec<u16> = bitwise.iter().map(|(k, _)| *k & 0x3fff).collect();
        assert_eq!(kinds, vec![1, 2, 3, 4, 5]);
        assert_eq!(attrs(bitwise[3].1), vec![(1, &[0xff, 0xf0, 0, 0][..])]);
        assert_eq!(attrs(bitwise[4].1), vec![(1, &[0, 0, 0, 0][..])]);
        let masq = attrs(list[5].1);
        assert_eq!(masq, vec![(1, &b"masq\0"[..]), (2 | NLA_F_NESTED, &[][..])]);
    }

    #[test]
    fn an_egress_rule_is_encoded_as_nft_does() {
        let mut exprs = Expr::iifname_match("fan-x");
        exprs.extend(Expr::prefix_match(
            IpField::Daddr,
            CmpOp::Eq,
            "250.0.0.0/8".parse().unwrap(),
        ));
        exprs.extend(Expr::prefix_match(
            IpField::Saddr,
            CmpOp::Neq,
            "250.0.28.16/28".parse().unwrap(),
        ));
        exprs.extend([Expr::Counter, Expr::Drop]);
        let mut batch = Batch::new();
        batch.new_rule("fan_x", "postrouting", &exprs);
        let data = batch.encode(1);
        let m = &messages(&data)[1];
        // nft's message: 472 bytes, expressions 424.
        assert_eq!(m.4.len() + 20, 472);
        let list = attrs(attrs(m.4)[2].1);
        let sizes: Vec<usize> = list.iter().map(|(_, v)| v.len() + 4).collect();
        assert_eq!(sizes, vec![36, 56, 52, 44, 52, 68, 44, 20, 48]);
        let meta = attrs(attrs(list[0].1)[1].1);
        assert_eq!(meta, vec![(2, &[0, 0, 0, 6][..]), (1, &[0, 0, 0, 1][..])]);
        let name = attrs(attrs(attrs(list[1].1)[1].1)[2].1);
        assert_eq!(name[0].1, b"fan-x\0\0\0\0\0\0\0\0\0\0\0");
        let immediate = attrs(attrs(list[8].1)[1].1);
        assert_eq!(immediate[0], (1, &[0, 0, 0, 0][..]));
        let verdict = attrs(attrs(immediate[1].1)[0].1);
        assert_eq!(verdict, vec![(1, &[0, 0, 0, 0][..])]); // NF_DROP
    }

    #[test]
    fn an_anonymous_set_is_encoded_as_nft_does() {
        let mut batch = Batch::new();
        batch.new_anonymous_addr_set(
            "fan_x",
            1,
            &[
                Ipv4Addr::new(172, 30, 0, 0),
                Ipv4Addr::new(172, 30, 255, 255),
            ],
        );
        let mut exprs = Expr::ip_protocol_match(4);
        exprs.extend(Expr::set_lookup(IpField::Saddr, 1));
        exprs.extend([Expr::Counter, Expr::Drop]);
        batch.new_rule("fan_x", "prerouting", &exprs);
        let data = batch.encode(1);
        let m = messages(&data);
        // nft's sizes: NEWSET 120, NEWSETELEM 88, NEWRULE 316.
        assert_eq!((m[1].0, m[1].1, m[1].4.len() + 20), (0x0a09, 0x405, 120));
        assert_eq!((m[2].0, m[2].1, m[2].4.len() + 20), (0x0a0c, 0x405, 88));
        assert_eq!((m[3].0, m[3].4.len() + 20), (0x0a06, 316));
        let set = attrs(m[1].4);
        let kinds: Vec<u16> = set.iter().map(|(k, _)| *k & 0x3fff).collect();
        assert_eq!(kinds, vec![1, 2, 3, 4, 5, 10, 9, 13]);
        assert_eq!(set[1].1, b"__set%d\0");
        assert_eq!(set[2].1, [0, 0, 0, 3]);
        assert_eq!(set[3].1, [0, 0, 0, 7]);
        assert_eq!(attrs(set[6].1), vec![(1, &[0, 0, 0, 2][..])]);
        let elems = attrs(m[2].4);
        assert_eq!(elems[2], (4, &[0, 0, 0, 1][..]));
        let list = attrs(elems[3].1);
        assert_eq!(list.len(), 2);
        let key = attrs(attrs(list[1].1)[0].1);
        assert_eq!(key, vec![(1, &[172, 30, 255, 255][..])]);
        let lookup = attrs(attrs(attrs(attrs(m[3].4)[2].1)[3].1)[1].1);
        assert_eq!(
            lookup,
            vec![
                (2, &[0, 0, 0, 1][..]),
                (1, &b"__set%d\0"[..]),
                (4, &[0, 0, 0, 1][..])
            ]
        );
    }
}
