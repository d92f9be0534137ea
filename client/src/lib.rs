//! fan client SDK
