// Package natstest starts embedded nats-servers with JetStream for tests: a
// single node or a cluster of three on loopback. Only tests import it.
package natstest

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Options returns the options of a single JetStream node on a random
// loopback port storing under dir.
func Options(dir string) *server.Options {
	return &server.Options{
		Host:      "127.0.0.1",
		Port:      -1,
		JetStream: true,
		StoreDir:  dir,
		NoLog:     true,
		NoSigs:    true,
	}
}

// Start starts a server with opts and waits until it is ready for
// connections; it fails the test otherwise. The server is shut down when
// the test ends.
func Start(tb testing.TB, opts *server.Options) *server.Server {
	tb.Helper()
	s, err := server.NewServer(opts)
	if err != nil {
		tb.Fatalf("natstest: new server: %v", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		tb.Fatalf("natstest: server not ready in 10s")
	}
	saved := opts.Clone()
	saved.Port = s.Addr().(*net.TCPAddr).Port
	started.Store(s, saved)
	tb.Cleanup(func() { s.Shutdown(); s.WaitForShutdown(); started.Delete(s) })
	return s
}

var started sync.Map // *server.Server -> *server.Options

// Run starts a single-node JetStream server with a fresh store directory.
func Run(tb testing.TB) *server.Server {
	tb.Helper()
	return Start(tb, Options(tb.TempDir()))
}

// Restart shuts s down (if it still runs) and starts a new server with the
// same options, port and store, so that state persists. It returns the new
// server.
func Restart(tb testing.TB, s *server.Server) *server.Server {
	tb.Helper()
	o, ok := started.Load(s)
	if !ok {
		tb.Fatalf("natstest: Restart of a server that Start did not start")
	}
	opts := o.(*server.Options).Clone()
	s.Shutdown()
	s.WaitForShutdown()
	return Start(tb, opts)
}

// Connect connects to s and returns the connection and a JetStream handle;
// the connection is closed when the test ends. Reconnects are retried
// forever so a test may restart the server underneath it.
func Connect(tb testing.TB, s *server.Server, opts ...nats.Option) (*nats.Conn, jetstream.JetStream) {
	tb.Helper()
	opts = append([]nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(50 * time.Millisecond)}, opts...)
	nc, err := nats.Connect(s.ClientURL(), opts...)
	if err != nil {
		tb.Fatalf("natstest: connect: %v", err)
	}
	tb.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatalf("natstest: jetstream: %v", err)
	}
	return nc, js
}

// Cluster is a 3-node JetStream cluster on loopback.
type Cluster struct {
	Servers []*server.Server
	Opts    []*server.Options
}

// RunCluster starts a 3-node cluster named "guardian-test" with routes on
// loopback and waits until it has a meta leader.
func RunCluster(tb testing.TB) *Cluster {
	tb.Helper()
	ports := freePorts(tb, 3)
	routes := ""
	for i, p := range ports {
		if i > 0 {
			routes += ","
		}
		routes += fmt.Sprintf("nats://127.0.0.1:%d", p)
	}
	c := &Cluster{}
	for i := range 3 {
		o := Options(tb.TempDir())
		o.ServerName = fmt.Sprintf("n%d", i+1)
		o.Cluster.Name = "guardian-test"
		o.Cluster.Host = "127.0.0.1"
		o.Cluster.Port = ports[i]
		o.Routes = server.RoutesFromStr(routes)
		c.Opts = append(c.Opts, o)
	}
	for _, o := range c.Opts {
		s, err := server.NewServer(o)
		if err != nil {
			tb.Fatalf("natstest: new cluster server: %v", err)
		}
		go s.Start()
		c.Servers = append(c.Servers, s)
		tb.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	}
	for _, s := range c.Servers {
		if !s.ReadyForConnections(10 * time.Second) {
			tb.Fatalf("natstest: cluster server %s not ready", s.Name())
		}
	}
	c.WaitForMetaLeader(tb, 20*time.Second)
	return c
}

// URLs returns the client URLs of the running servers, comma-separated.
func (c *Cluster) URLs() string {
	u := ""
	for _, s := range c.Servers {
		if !s.Running() {
			continue
		}
		if u != "" {
			u += ","
		}
		u += s.ClientURL()
	}
	return u
}

// WaitForMetaLeader waits until some server reports a JetStream meta leader.
func (c *Cluster) WaitForMetaLeader(tb testing.TB, d time.Duration) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	for ctx.Err() == nil {
		for _, s := range c.Servers {
			if s.Running() && s.JetStreamIsLeader() {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	tb.Fatalf("natstest: no meta leader within %s", d)
}

// StreamLeader returns the server leading the stream in account $G, or nil.
func (c *Cluster) StreamLeader(stream string) *server.Server {
	for _, s := range c.Servers {
		if s.Running() && s.JetStreamIsStreamLeader(server.DEFAULT_GLOBAL_ACCOUNT, stream) {
			return s
		}
	}
	return nil
}

func freePorts(tb testing.TB, n int) []int {
	tb.Helper()
	var ls []net.Listener
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatalf("natstest: free port: %v", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}
