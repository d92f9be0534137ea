package fan

import (
	"fmt"
	"strings"
	"unicode"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrorDomain is the ErrorInfo.domain of every error the agent returns.
const ErrorDomain = "fan.agent.v1"

// FieldViolation is one invalid request field (google.rpc.BadRequest).
type FieldViolation struct {
	Field       string `json:"field"`
	Description string `json:"description"`
}

// PreconditionViolation is one unmet precondition (google.rpc.PreconditionFailure).
type PreconditionViolation struct {
	Type        string `json:"type"`
	Subject     string `json:"subject"`
	Description string `json:"description"`
}

// ResourceInfo is the resource a call was about (google.rpc.ResourceInfo).
type ResourceInfo struct {
	ResourceType string
	ResourceName string
	Owner        string
	Description  string
}

// Error is a failed call with its google.rpc.Status details decoded. Reason
// is the ErrorInfo.reason (one of the Reason* constants; "" when the call
// never reached the agent, e.g. a refused connection). It keeps the status,
// so status.FromError and status.Code work on it as on any gRPC error.
type Error struct {
	Code                   codes.Code
	Message                string
	Reason                 string
	Domain                 string
	Metadata               map[string]string
	FieldViolations        []FieldViolation
	PreconditionViolations []PreconditionViolation
	Resource               *ResourceInfo
	// Details holds every detail message, decoded where its type is known.
	Details []interface{}

	status *status.Status
}

// Error formats the code (as the proto names it, INVALID_ARGUMENT), the
// reason and the message.
func (e *Error) Error() string {
	if e.Reason != "" {
		return fmt.Sprintf("fan: %s %s: %s", CodeName(e.Code), e.Reason, e.Message)
	}
	return fmt.Sprintf("fan: %s: %s", CodeName(e.Code), e.Message)
}

// CodeName is a code's name in google.rpc.Code ("INVALID_ARGUMENT"), where
// codes.Code.String gives grpc-go's ("InvalidArgument").
func CodeName(c codes.Code) string {
	var b strings.Builder
	prev := ' '
	for _, r := range c.String() {
		if unicode.IsUpper(r) && unicode.IsLower(prev) {
			b.WriteByte('_')
		}
		b.WriteRune(unicode.ToUpper(r))
		prev = r
	}
	return b.String()
}

// GRPCStatus returns the status the error was decoded from.
func (e *Error) GRPCStatus() *status.Status { return e.status }

// FromError decodes err, the error of a call, into an *Error; false if err
// carries no gRPC status (nil, or not from a call).
func FromError(err error) (*Error, bool) {
	if err == nil {
		return nil, false
	}
	if e, ok := err.(*Error); ok {
		return e, true
	}
	st, ok := status.FromError(err)
	if !ok {
		return nil, false
	}
	e := &Error{Code: st.Code(), Message: st.Message(), Metadata: map[string]string{}, status: st}
	for _, detail := range st.Details() {
		e.Details = append(e.Details, detail)
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			e.Reason, e.Domain = d.GetReason(), d.GetDomain()
			for k, v := range d.GetMetadata() {
				e.Metadata[k] = v
			}
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				e.FieldViolations = append(e.FieldViolations, FieldViolation{v.GetField(), v.GetDescription()})
			}
		case *errdetails.PreconditionFailure:
			for _, v := range d.GetViolations() {
				e.PreconditionViolations = append(e.PreconditionViolations, PreconditionViolation{v.GetType(), v.GetSubject(), v.GetDescription()})
			}
		case *errdetails.ResourceInfo:
			e.Resource = &ResourceInfo{d.GetResourceType(), d.GetResourceName(), d.GetOwner(), d.GetDescription()}
		}
	}
	return e, true
}
