//! The address allocator over one slice. Pure: the agent persists what it returns.
//!
//! Layout of a slice (FAN.md §1): the network and broadcast addresses are never used; .1 is
//! the host's bridge gateway; `host-reserve N` (N >= 1) reserves .1 .. .N for the host;
//! containers get .N+1 .. broadcast-1.
//!
//! Allocation is next-fit, like CNI host-local: the search starts just after the last address
//! handed out (the cursor) and wraps, so a just-released address is not handed out again at
//! once (stale ARP entries, late packets and leaked references to it get time to die out).

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::ops::Bound;

use ipnetwork::Ipv4Network;
use thiserror::Error;

use crate::fan::MAX_SLICE_PREFIX;

/// Errors from the slice pool and the allocator. Messages name the rule and the value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IpamError {
    /// The address is not inside the slice.
    #[error("address {address} is outside slice {slice}")]
    OutsideSlice {
        /// The offending address.
        address: Ipv4Addr,
        /// The slice.
        slice: Ipv4Network,
    },
    /// The address is the slice's network address, which is never assigned.
    #[error("address {address} is the network address of slice {slice} and is never assigned")]
    NetworkAddress {
        /// The offending address.
        address: Ipv4Addr,
        /// The slice.
        slice: Ipv4Network,
    },
    /// The address is the slice's broadcast address, which is never assigned.
    #[error("address {address} is the broadcast address of slice {slice} and is never assigned")]
    BroadcastAddress {
        /// The offending address.
        address: Ipv4Addr,
        /// The slice.
        slice: Ipv4Network,
    },
    /// The address is one of the first `reserve` host addresses, kept for the host.
    #[error(
        "address {address} is reserved for the host (host-reserve {reserve} keeps the first \
         {reserve} host addresses of the slice, starting with the gateway .1)"
    )]
    Reserved {
        /// The offending address.
        address: Ipv4Addr,
        /// The host reserve in force.
        reserve: u32,
    },
    /// Another owner already holds the requested address.
    #[error("address {address} is already assigned to another owner")]
    Taken {
        /// The requested address.
        address: Ipv4Addr,
    },
    /// The owner already holds a different address than the one requested.
    #[error(
        "the owner already holds {address} and cannot also take requested address {requested}; \
         one address per owner (release it first)"
    )]
    OwnerHasAddress {
        /// The address the owner holds.
        address: Ipv4Addr,
        /// The address that was requested.
        requested: Ipv4Addr,
    },
    /// Every assignable address is in use.
    #[error("slice {slice} is full: all {capacity} assignable addresses are in use")]
    Exhausted {
        /// The slice.
        slice: Ipv4Network,
        /// Its capacity.
        capacity: u32,
    },
    /// The host reserve is 0, or leaves no assignable address.
    #[error(
        "host-reserve {reserve} is invalid for slice {slice}: it must be between 1 (the gateway .1) \
         and {max} (so at least one address stays assignable)"
    )]
    InvalidReserve {
        /// The offending reserve.
        reserve: u32,
        /// The slice.
        slice: Ipv4Network,
        /// The largest legal reserve for this slice.
        max: u32,
    },
    /// The slice has host bits set or is smaller than a /30.
    #[error("slice {slice} is invalid: it must have no host bits and a prefix of at most /{max}", max = MAX_SLICE_PREFIX)]
    InvalidSlice {
        /// The offending slice.
        slice: Ipv4Network,
    },
    /// A restored allocation repeats an address or an owner.
    #[error("{}", duplicate_message(*.address, *.existing))]
    Duplicate {
        /// The address of the repeated entry.
        address: Ipv4Addr,
        /// `None`: `address` itself appears twice. `Some(a)`: the owner of `address` already
        /// holds `a`.
        existing: Option<Ipv4Addr>,
    },
    /// A restored cursor is outside the slice.
    #[error("cursor {cursor} is outside slice {slice}")]
    InvalidCursor {
        /// The offending cursor.
        cursor: Ipv4Addr,
        /// The slice.
        slice: Ipv4Network,
    },
}

fn duplicate_message(address: Ipv4Addr, existing: Option<Ipv4Addr>) -> String {
    match existing {
        None => format!("address {address} is allocated twice; each address has one owner"),
        Some(a) => format!(
            "address {address} belongs to an owner that already holds {a}; each owner has one address"
        ),
    }
}

/// The assignable range of one slice: network + host_reserve + 1 ..= broadcast - 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlicePool {
    slice: Ipv4Network,
    host_reserve: u32,
}

impl SlicePool {
    /// Builds the pool. The slice must have no host bits and be /30 or larger; the reserve
    /// must be at least 1 (the gateway .1 always belongs to the host's bridge) and leave at
    /// least one assignable address.
    pub fn new(slice: Ipv4Network, host_reserve: u32) -> Result<SlicePool, IpamError> {
        if slice.ip() != slice.network() || slice.prefix() > MAX_SLICE_PREFIX {
            return Err(IpamError::InvalidSlice { slice });
        }
        let max = max_host_reserve(slice.prefix());
        if host_reserve == 0 || host_reserve > max {
            return Err(IpamError::InvalidReserve {
                reserve: host_reserve,
                slice,
                max,
            });
        }
        Ok(SlicePool {
            slice,
            host_reserve,
        })
    }

    /// The slice.
    pub fn slice(&self) -> Ipv4Network {
        self.slice
    }

    /// The host reserve N (.1 .. .N are the host's).
    pub fn host_reserve(&self) -> u32 {
        self.host_reserve
    }

    /// The gateway, .1 of the slice (the bridge address).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.slice.network()) + 1)
    }

    /// First assignable address: network + host_reserve + 1.
    pub fn first(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.first_u32())
    }

    /// Last assignable address: broadcast - 1.
    pub fn last(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.last_u32())
    }

    /// Number of assignable addresses (always >= 1).
    pub fn capacity(&self) -> u32 {
        self.last_u32() - self.first_u32() + 1
    }

    fn first_u32(&self) -> u32 {
        u32::from(self.slice.network()) + self.host_reserve + 1
    }

    fn last_u32(&self) -> u32 {
        u32::from(self.slice.broadcast()) - 1
    }

    /// True if `addr` may be handed to a container.
    pub fn is_assignable(&self, addr: Ipv4Addr) -> bool {
        self.check_assignable(addr).is_ok()
    }

    /// Why `addr` may not be handed to a container, if it may not.
    pub fn check_assignable(&self, addr: Ipv4Addr) -> Result<(), IpamError> {
        let slice = self.slice;
        if !slice.contains(addr) {
            return Err(IpamError::OutsideSlice {
                address: addr,
                slice,
            });
        }
        if addr == slice.network() {
            return Err(IpamError::NetworkAddress {
                address: addr,
                slice,
            });
        }
        if addr == slice.broadcast() {
            return Err(IpamError::BroadcastAddress {
                address: addr,
                slice,
            });
        }
        if u32::from(addr) < self.first_u32() {
            return Err(IpamError::Reserved {
                address: addr,
                reserve: self.host_reserve,
            });
        }
        Ok(())
    }
}

impl fmt::Display for SlicePool {
    /// `250.0.28.0/24 (.2 .. .254, host-reserve 1)`-style summary with full addresses.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({} .. {}, host-reserve {})",
            self.slice,
            self.first(),
            self.last(),
            self.host_reserve
        )
    }
}

/// Result of [`Allocator::allocate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Allocated {
    /// The owner's address.
    pub address: Ipv4Addr,
    /// False if the owner already held it (an idempotent retry).
    pub newly_allocated: bool,
}

/// Next-fit allocator over one [`SlicePool`], one address per owner.
///
/// Free space is kept as disjoint, non-adjacent intervals, so allocation, a requested
/// address and release are all O(log n) regardless of fragmentation.
#[derive(Clone, Debug)]
pub struct Allocator<O: Ord + Clone> {
    pool: SlicePool,
    by_addr: BTreeMap<u32, O>,
    by_owner: BTreeMap<O, u32>,
    /// Free assignable addresses: start -> end (inclusive).
    free: BTreeMap<u32, u32>,
    cursor: Option<u32>,
}

impl<O: Ord + Clone> Allocator<O> {
    /// An empty allocator with no cursor (the first allocation gets `pool.first()`).
    pub fn new(pool: SlicePool) -> Allocator<O> {
        let mut free = BTreeMap::new();
        free.insert(pool.first_u32(), pool.last_u32());
        Allocator {
            pool,
            by_addr: BTreeMap::new(),
            by_owner: BTreeMap::new(),
            free,
            cursor: None,
        }
    }

    /// Rebuilds an allocator from persisted allocations and cursor.
    ///
    /// Rejects non-assignable addresses, an address or owner listed twice, and a cursor
    /// outside the slice. A cursor inside the slice but not assignable (e.g. after the host
    /// reserve grew) is kept: it only says where the next search starts.
    pub fn restore(
        pool: SlicePool,
        allocations: impl IntoIterator<Item = (Ipv4Addr, O)>,
        cursor: Option<Ipv4Addr>,
    ) -> Result<Allocator<O>, IpamError> {
        if let Some(c) = cursor {
            if !pool.slice.contains(c) {
                return Err(IpamError::InvalidCursor {
                    cursor: c,
                    slice: pool.slice,
                });
            }
        }
        let mut by_addr = BTreeMap::new();
        let mut by_owner = BTreeMap::new();
        for (addr, owner) in allocations {
            pool.check_assignable(addr)?;
            let a = u32::from(addr);
            if by_addr.contains_key(&a) {
                return Err(IpamError::Duplicate {
                    address: addr,
                    existing: None,
                });
            }
            if let Some(existing) = by_owner.get(&owner) {
                return Err(IpamError::Duplicate {
                    address: addr,
                    existing: Some(Ipv4Addr::from(*existing)),
                });
            }
            by_owner.insert(owner.clone(), a);
            by_addr.insert(a, owner);
        }
        // Free intervals are the gaps between sorted allocations.
        let mut free = BTreeMap::new();
        let mut next = pool.first_u32();
        for &a in by_addr.keys() {
            if a > next {
                free.insert(next, a - 1);
            }
            next = a + 1;
        }
        if next <= pool.last_u32() {
            free.insert(next, pool.last_u32());
        }
        Ok(Allocator {
            pool,
            by_addr,
            by_owner,
            free,
            cursor: cursor.map(u32::from),
        })
    }

    /// Gives `owner` an address.
    ///
    /// - the owner already has one: that address, `newly_allocated = false` (if `requested`
    ///   names a different address: [`IpamError::OwnerHasAddress`]);
    /// - `requested`: that address if assignable and free ([`IpamError::Taken`] otherwise);
    /// - else next-fit from just after the cursor, wrapping; [`IpamError::Exhausted`] if full.
    ///
    /// A new allocation moves the cursor to the address handed out.
    pub fn allocate(
        &mut self,
        owner: O,
        requested: Option<Ipv4Addr>,
    ) -> Result<Allocated, IpamError> {
        if let Some(&held) = self.by_owner.get(&owner) {
            let held = Ipv4Addr::from(held);
            return match requested {
                Some(r) if r != held => Err(IpamError::OwnerHasAddress {
                    address: held,
                    requested: r,
                }),
                _ => Ok(Allocated {
                    address: held,
                    newly_allocated: false,
                }),
            };
        }
        let addr = match requested {
            Some(r) => {
                self.pool.check_assignable(r)?;
                if self.by_addr.contains_key(&u32::from(r)) {
                    return Err(IpamError::Taken { address: r });
                }
                u32::from(r)
            }
            None => self.next_free().ok_or(IpamError::Exhausted {
                slice: self.pool.slice,
                capacity: self.pool.capacity(),
            })?,
        };
        self.take(addr);
        self.by_owner.insert(owner.clone(), addr);
        self.by_addr.insert(addr, owner);
        self.cursor = Some(addr);
        Ok(Allocated {
            address: Ipv4Addr::from(addr),
            newly_allocated: true,
        })
    }

    /// First free address at or after cursor + 1, wrapping to the start of the pool.
    fn next_free(&self) -> Option<u32> {
        let (first, last) = (self.pool.first_u32(), self.pool.last_u32());
        let start = match self.cursor {
            Some(c) if c >= first && c < last => c + 1,
            _ => first,
        };
        if let Some((_, &end)) = self.free.range(..=start).next_back() {
            if end >= start {
                return Some(start);
            }
        }
        self.free
            .range(start..)
            .next()
            .or_else(|| self.free.iter().next())
            .map(|(&s, _)| s)
    }

    /// Removes a free address from the free intervals (it must be free).
    fn take(&mut self, addr: u32) {
        let (&s, &e) = self
            .free
            .range(..=addr)
            .next_back()
            .expect("address is free");
        debug_assert!(addr <= e, "address is free");
        self.free.remove(&s);
        if s < addr {
            self.free.insert(s, addr - 1);
        }
        if addr < e {
            self.free.insert(addr + 1, e);
        }
    }

    /// Returns an address to the free intervals, merging with its neighbours.
    fn give(&mut self, addr: u32) {
        let mut start = addr;
        let mut end = addr;
        if let Some((&s, &e)) = self.free.range(..addr).next_back() {
            if e + 1 == addr {
                start = s;
                self.free.remove(&s);
            }
        }
        if let Some(&e) = self.free.get(&(addr + 1)) {
            self.free.remove(&(addr + 1));
            end = e;
        }
        self.free.insert(start, end);
    }

    /// Frees the owner's address; returns it, or `None` if the owner had none.
    ///
    /// The freed address is the last one the next-fit search reaches again (see
    /// [`Allocator::cursor`]).
    pub fn release_owner(&mut self, owner: &O) -> Option<Ipv4Addr> {
        let addr = self.by_owner.remove(owner)?;
        self.by_addr.remove(&addr);
        self.free_address(addr);
        Some(Ipv4Addr::from(addr))
    }

    /// Frees an address; returns its former owner, or `None` if it was free.
    ///
    /// The freed address is the last one the next-fit search reaches again.
    pub fn release_address(&mut self, addr: Ipv4Addr) -> Option<O> {
        let a = u32::from(addr);
        let owner = self.by_addr.remove(&a)?;
        self.by_owner.remove(&owner);
        self.free_address(a);
        Some(owner)
    }

    fn free_address(&mut self, addr: u32) {
        self.give(addr);
        // Plain next-fit would hand this address out again at once if every address between
        // the cursor and it is taken (e.g. it was handed out on the previous lap). Moving the
        // cursor onto it skips no other free address (they are all taken in between) and puts
        // it at the very end of the search, so a just-released address is never reused while
        // another is free. The cursor is persisted, so restore() keeps this behaviour.
        if self.next_free() == Some(addr) {
            self.cursor = Some(addr);
        }
    }

    /// Who holds `addr`.
    pub fn owner_of(&self, addr: Ipv4Addr) -> Option<&O> {
        self.by_addr.get(&u32::from(addr))
    }

    /// The address `owner` holds.
    pub fn address_of(&self, owner: &O) -> Option<Ipv4Addr> {
        self.by_owner.get(owner).map(|a| Ipv4Addr::from(*a))
    }

    /// Number of allocated addresses.
    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    /// True if nothing is allocated.
    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }

    /// Number of free assignable addresses.
    pub fn free_count(&self) -> u32 {
        self.pool.capacity() - self.by_addr.len() as u32
    }

    /// Where the next-fit search resumes (it starts just after this address): the last
    /// address handed out, or a just-released address the search would otherwise have
    /// reached first. Persist it with the allocations and pass it to [`Allocator::restore`].
    pub fn cursor(&self) -> Option<Ipv4Addr> {
        self.cursor.map(Ipv4Addr::from)
    }

    /// The pool.
    pub fn pool(&self) -> &SlicePool {
        &self.pool
    }

    /// All allocations in address order.
    pub fn iter(&self) -> impl Iterator<Item = (Ipv4Addr, &O)> + '_ {
        self.by_addr.iter().map(|(a, o)| (Ipv4Addr::from(*a), o))
    }

    /// Allocations with addresses strictly greater than `after` (all if `None`), in address
    /// order: a page token for listing.
    pub fn iter_after(&self, after: Option<Ipv4Addr>) -> impl Iterator<Item = (Ipv4Addr, &O)> + '_ {
        let lower = match after {
            Some(a) => Bound::Excluded(u32::from(a)),
            None => Bound::Unbounded,
        };
        self.by_addr
            .range((lower, Bound::Unbounded))
            .map(|(a, o)| (Ipv4Addr::from(*a), o))
    }
}

/// Largest legal host reserve for slices of `slice_prefix` (0 if the prefix is over /30):
/// everything but network, broadcast and one assignable address.
pub fn max_host_reserve(slice_prefix: u8) -> u32 {
    if slice_prefix > MAX_SLICE_PREFIX {
        return 0;
    }
    u32::try_from((1u64 << (32 - slice_prefix)) - 3).unwrap_or(u32::MAX)
}
