package fan

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fan-project/fan/client/go/fanv1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestDialRefusesTargetsItCannotServe(t *testing.T) {
	for target, want := range map[string]string{
		"http://127.0.0.1:7443":  "mutual TLS",
		"dns:///agent:7443":      "use unix:///PATH",
		"https://127.0.0.1":      "https://HOST:PORT",
		"https://127.0.0.1:7443": "requires a client certificate",
		"unix:":                  "no socket path",
	} {
		if _, err := Dial(target); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Dial(%q) = %v, want an error containing %q", target, err, want)
		}
	}
	if _, err := Dial("unix:///run/fan/agent.sock", WithTLSFiles("ca.pem", "", "")); err == nil ||
		!strings.Contains(err.Error(), "only to https://") {
		t.Errorf("TLS files on a unix target: %v", err)
	}
}

// A socket nobody serves: every target form fails the call with UNAVAILABLE
// as an *Error without a reason (the call never reached an agent).
func TestCallWithoutAgentIsAnErrorWithoutReason(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "none.sock")
	for _, target := range []string{"unix://" + socket, "unix:" + socket, socket} {
		client, err := Dial(target)
		if err != nil {
			t.Fatalf("Dial(%q): %v", target, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err = client.Agent.GetAgentInfo(ctx, &fanv1.GetAgentInfoRequest{})
		cancel()
		client.Close()
		var fe *Error
		if !errors.As(err, &fe) || fe.Code != codes.Unavailable || fe.Reason != "" {
			t.Errorf("%s: got %#v (%v), want an *Error UNAVAILABLE without reason", target, fe, err)
		}
		if status.Code(err) != codes.Unavailable {
			t.Errorf("%s: status.Code(err) = %v", target, status.Code(err))
		}
	}
}

func TestCodeNameIsTheProtoName(t *testing.T) {
	for c, want := range map[codes.Code]string{
		codes.OK: "OK", codes.InvalidArgument: "INVALID_ARGUMENT",
		codes.FailedPrecondition: "FAILED_PRECONDITION", codes.Unavailable: "UNAVAILABLE",
	} {
		if got := CodeName(c); got != want {
			t.Errorf("CodeName(%v) = %q, want %q", c, got, want)
		}
	}
}
