//! The ipip tunnel device shared by the `ipip` and `kernel-fan` backends:
//! one device per (local address, underlay device), marked with the networks
//! that use it ([`device`]); the kernel fan map attribute it may carry
//! ([`fan_map`], Ubuntu's ABI); and whether the kernel has the ipip module
//! at all ([`probe`]). Neither backend reaches into the other: both build on
//! this module.

pub mod device;
pub mod fan_map;
pub mod probe;
