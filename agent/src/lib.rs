//! fan agent
