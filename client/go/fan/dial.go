package fan

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"

	"github.com/fan-project/fan/client/go/fanv1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// DefaultTarget is the agent's default socket; $FAN_AGENT overrides it, as
// for fan-client.
const DefaultTarget = "unix:///run/fan/agent.sock"

// Client is a connection to one agent. Agent and Health return *Error for
// every failed unary call. Close it when done.
type Client struct {
	// Conn is the underlying connection, for other services (reflection).
	Conn *grpc.ClientConn
	// Agent is the fan.agent.v1.FanAgentService client.
	Agent fanv1.FanAgentServiceClient
	// Health is the standard grpc.health.v1.Health client.
	Health healthpb.HealthClient
}

// Close closes the connection.
func (c *Client) Close() error { return c.Conn.Close() }

type options struct {
	ca, cert, key string
	dial          []grpc.DialOption
}

// Option configures Dial.
type Option func(*options)

// WithTLSFiles sets the PEM files for an https:// target: ca is the CA that
// signed the agent's certificate ("" for the system roots), cert and key the
// client certificate and its key (the agent's TCP listener serves only
// mutual TLS).
func WithTLSFiles(ca, cert, key string) Option {
	return func(o *options) { o.ca, o.cert, o.key = ca, cert, key }
}

// WithDialOptions adds grpc.DialOptions (interceptors, a blocking dial, ...).
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dial = append(o.dial, opts...) }
}

// Dial opens a connection to an agent; like grpc.Dial it does not wait for
// the connection unless grpc.WithBlock is passed. target ("" means
// $FAN_AGENT, else DefaultTarget) is one of:
//
//   - unix:///abs/path or unix:path: the unix socket, plaintext;
//   - a bare socket path: the unix socket through a custom dialer (the
//     kubelet and CSI pattern);
//   - https://HOST:PORT: the TCP listener, mutual TLS with WithTLSFiles.
//
// Nothing else (authority, keepalive) is set: these are grpc-go's defaults.
func Dial(target string, opts ...Option) (*Client, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if target == "" {
		target = os.Getenv("FAN_AGENT")
	}
	if target == "" {
		target = DefaultTarget
	}
	dial := []grpc.DialOption{grpc.WithUnaryInterceptor(decodeErrors)}
	hasTLS := o.ca != "" || o.cert != "" || o.key != ""
	switch {
	case strings.HasPrefix(target, "https://"):
		u, err := url.Parse(target)
		if err != nil || u.Hostname() == "" || u.Port() == "" || (u.Path != "" && u.Path != "/") {
			return nil, fmt.Errorf("fan: target %q: an https target is https://HOST:PORT", target)
		}
		config, err := tlsConfig(o)
		if err != nil {
			return nil, fmt.Errorf("fan: target %q: %w", target, err)
		}
		dial = append(dial, grpc.WithTransportCredentials(credentials.NewTLS(config)))
		target = u.Host
	case hasTLS:
		return nil, fmt.Errorf("fan: target %q: TLS files apply only to https:// targets", target)
	case strings.HasPrefix(target, "unix:"):
		if target == "unix:" || target == "unix://" {
			return nil, fmt.Errorf("fan: target %q: no socket path", target)
		}
		dial = append(dial, grpc.WithInsecure())
	case strings.Contains(target, "://") || strings.HasPrefix(target, "http:"):
		return nil, fmt.Errorf("fan: target %q: use unix:///PATH, unix:PATH, a socket path, or https://HOST:PORT (agents serve TCP only with mutual TLS)", target)
	default:
		// A bare path: grpc resolves it as-is and the dialer opens the socket.
		dial = append(dial, grpc.WithInsecure(), grpc.WithContextDialer(
			func(ctx context.Context, path string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", path)
			}))
	}
	conn, err := grpc.Dial(target, append(dial, o.dial...)...)
	if err != nil {
		return nil, fmt.Errorf("fan: dial %q: %w", target, err)
	}
	return &Client{
		Conn:   conn,
		Agent:  fanv1.NewFanAgentServiceClient(conn),
		Health: healthpb.NewHealthClient(conn),
	}, nil
}

func tlsConfig(o options) (*tls.Config, error) {
	if o.cert == "" || o.key == "" {
		return nil, fmt.Errorf("the agent's TCP listener requires a client certificate: use WithTLSFiles(ca, cert, key)")
	}
	pair, err := tls.LoadX509KeyPair(o.cert, o.key)
	if err != nil {
		return nil, fmt.Errorf("client certificate %s / key %s: %w", o.cert, o.key, err)
	}
	config := &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	if o.ca != "" {
		pem, err := os.ReadFile(o.ca)
		if err != nil {
			return nil, fmt.Errorf("ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca %s: no PEM certificate in it", o.ca)
		}
		config.RootCAs = pool
	}
	return config, nil
}

// decodeErrors turns every failed unary call's status into an *Error.
func decodeErrors(ctx context.Context, method string, req, reply interface{}, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if err := invoker(ctx, method, req, reply, cc, opts...); err != nil {
		if e, ok := FromError(err); ok {
			return e
		}
		return err
	}
	return nil
}
