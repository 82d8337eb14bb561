package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/jsguardian/guardian/pkg/jsguard"
)

// userInfoSubject answers every client with its own user and account.
const userInfoSubject = "$SYS.REQ.USER.INFO"

// ownAccount asks the server which account nc is in. In required identity
// mode guardian refuses a Nats-Request-Info header that names its own
// account: the server never stamps requests from within it, so a client
// of that account wrote it. It returns the request's error or
// *jsguard.TimeoutError, or an error when the reply carries none.
func ownAccount(ctx context.Context, g *jsguard.Guard, nc *nats.Conn) (string, error) {
	msg, err := jsguard.DoValue(ctx, g, jsguard.NATSPublish, "request "+userInfoSubject, func(ctx context.Context) (*nats.Msg, error) {
		return nc.RequestWithContext(ctx, userInfoSubject, nil)
	})
	if err != nil {
		return "", fmt.Errorf("%s: %w", userInfoSubject, err)
	}
	var r struct {
		Data *struct {
			Account string `json:"account"`
		} `json:"data"`
		Error *struct {
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(msg.Data, &r); err != nil {
		return "", fmt.Errorf("%s: %w", userInfoSubject, err)
	}
	if r.Error != nil || r.Data == nil || r.Data.Account == "" {
		return "", fmt.Errorf("%s: no account in the reply %.200q", userInfoSubject, msg.Data)
	}
	return r.Data.Account, nil
}

// errOldServer reports a nats-server without the fixes for spoofed
// Nats-Request-Info headers.
var errOldServer = errors.New("nats-server lacks the fixes for spoofed Nats-Request-Info headers (CVE-2026-33223, CVE-2026-33246)")

// checkIdentityServer refuses, with an error wrapping errOldServer, a
// server version older than 2.11.15 in the 2.11 line, 2.12.6 in the 2.12
// line, or older than 2.11; and a version it cannot read.
func checkIdentityServer(version string) error {
	v := strings.TrimPrefix(strings.SplitN(version, "-", 2)[0], "v")
	parts := strings.Split(v, ".")
	if len(parts) != 3 {
		return fmt.Errorf("%w: cannot read the server version %q", errOldServer, version)
	}
	var n [3]int
	for i, p := range parts {
		x, err := strconv.Atoi(p)
		if err != nil {
			return fmt.Errorf("%w: cannot read the server version %q", errOldServer, version)
		}
		n[i] = x
	}
	ok := n[0] > 2 || (n[0] == 2 && (n[1] >= 13 || (n[1] == 12 && n[2] >= 6) || (n[1] == 11 && n[2] >= 15)))
	if !ok {
		return fmt.Errorf("%w: connected to %s; GUARDIAN_IDENTITY=required needs 2.11.15, 2.12.6 or later", errOldServer, version)
	}
	return nil
}
