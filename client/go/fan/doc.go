// Package fan is the hand-written layer of the Go SDK for the fan agent API
// (fan.agent.v1): Dial opens a connection for any target form an agent
// serves, every failed call returns an *Error carrying the decoded
// google.rpc.Status details, and the Reason* constants list every
// ErrorInfo.reason. The generated messages and client are in package fanv1.
package fan
