module github.com/fan-project/fan/client/go

go 1.19

// The versions Debian 12 ships (golang-google-grpc-dev and friends):
// generate.sh builds the module offline from /usr/share/gocode in vendor
// mode; online, `go build` fetches these same versions from their origin.
require (
	github.com/golang/protobuf v1.5.2
	golang.org/x/net v0.7.0
	golang.org/x/sys v0.5.0
	golang.org/x/text v0.7.0
	google.golang.org/genproto v0.0.0-20200526211855-cb27e3aa2013
	google.golang.org/grpc v1.33.3
	google.golang.org/protobuf v1.28.1
)
