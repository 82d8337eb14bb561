package console_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/internal/console"
	"github.com/jsguardian/guardian/internal/natstest"
	"github.com/jsguardian/guardian/pkg/auditstream"
	"github.com/jsguardian/guardian/pkg/kvapprovals"
)

// Serve the console in local mode over an approvals service and show that
// a pending approval is on the page.
func ExampleNew() {
	dir, _ := os.MkdirTemp("", "console-example")
	defer os.RemoveAll(dir)
	srv, err := server.NewServer(natstest.Options(dir))
	if err != nil {
		log.Fatal(err)
	}
	go srv.Start()
	defer srv.Shutdown()
	if !srv.ReadyForConnections(10 * time.Second) {
		log.Fatal("nats-server not ready")
	}
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	svc, err := kvapprovals.Open(ctx, nil, js, kvapprovals.DefaultConfig())
	if err != nil {
		log.Fatal(err)
	}
	audit := auditstream.DefaultConfig()
	if _, err := auditstream.Ensure(ctx, nil, js, audit); err != nil {
		log.Fatal(err)
	}
	if _, err := svc.Request(ctx, "acme", kvapprovals.RequestInput{ID: "deploy-42", SessionID: "s1", RequestedBy: "alice"}); err != nil {
		log.Fatal(err)
	}

	c, err := console.New(ctx, console.Config{Mode: console.ModeLocal, Approvals: svc, NC: nc, JS: js, Audit: audit})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	web := httptest.NewServer(c)
	defer web.Close()

	resp, err := http.Get(web.URL + "/ui/pending")
	if err != nil {
		log.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	page := string(body)
	fmt.Println(resp.StatusCode, strings.Contains(page, `data-key="acme.deploy-42"`), strings.Contains(page, "nobody is logged in"))
	// Output: 200 true true
}
