package kvapprovals

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// RequestInfoHeader is the header nats-server stamps on a request that
// crosses a service import from another account: a JSON object naming the
// caller's account ("acc") and, when the import has share: true, its user,
// name and tags. The server replaces a copy the client sent on that path;
// a request from guardian's own account gets no stamp and keeps whatever
// the client wrote.
const RequestInfoHeader = "Nats-Request-Info"

// Identity sources.
const (
	// SourceNATS: taken from the server's Nats-Request-Info stamp.
	SourceNATS = "nats"
	// SourceOIDC: a browser login verified by an OIDC provider.
	SourceOIDC = "oidc"
	// SourceAsserted: the name the client wrote in the body, unverified.
	SourceAsserted = "asserted"
)

// Identity is who made a call. For SourceNATS, Account and User are what
// nats-server authenticated (User is the user name, nkey or JWT public
// key), Name the user's name in its JWT and Tags its JWT tags. For
// SourceOIDC, Subject is the login's subject and User its verified email
// (the subject when it has none), with its Name and Groups. For
// SourceAsserted only User is set, as the client wrote it. An Identity is a
// plain value.
type Identity struct {
	Source  string   `json:"source"`
	Account string   `json:"account,omitempty"`
	User    string   `json:"user"`
	Subject string   `json:"subject,omitempty"`
	Name    string   `json:"name,omitempty"`
	Tags    []string `json:"tags,omitempty"`
	Email   string   `json:"email,omitempty"`
	Groups  []string `json:"groups,omitempty"`
}

// String returns "account/user" for an identity with an account, else the
// user, followed by " (asserted)" when nothing verified it.
func (id *Identity) String() string {
	s := id.User
	if id.Account != "" {
		s = id.Account + "/" + id.User
	}
	if id.Source == SourceAsserted {
		s += " (asserted)"
	}
	return s
}

// Same reports whether a and b are the same principal: the same source,
// account and user. An asserted name is the same as any identity with
// that user name, so that a name typed in a body can never slip past the
// self-approval check.
func (id *Identity) Same(b *Identity) bool {
	if id == nil || b == nil {
		return false
	}
	if id.Source == SourceAsserted || b.Source == SourceAsserted {
		return id.User == b.User
	}
	if id.Source == SourceOIDC && b.Source == SourceOIDC {
		return id.Subject == b.Subject
	}
	return id.Source == b.Source && id.Account == b.Account && id.User == b.User
}

func (id *Identity) clone() *Identity {
	if id == nil {
		return nil
	}
	c := *id
	c.Tags, c.Groups = slices.Clone(id.Tags), slices.Clone(id.Groups)
	return &c
}

type identityKey struct{}

// WithIdentity returns ctx carrying the caller's authenticated identity. A
// Service takes the actor of a request, decision, cancellation or
// extension from it instead of the body.
func WithIdentity(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, identityKey{}, id.clone())
}

// IdentityFrom returns the identity ctx carries, if any.
func IdentityFrom(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(identityKey{}).(*Identity)
	if !ok || id == nil {
		return Identity{}, false
	}
	return *id.clone(), true
}

// IdentityMode says where a Service takes the actor from.
type IdentityMode string

// The identity modes.
const (
	// IdentityAsserted: the actor is the body's requested_by, decided_by,
	// cancelled_by or extended_by, or the context's identity when it
	// carries one (see WithIdentity). For a single account, where any
	// client could write any name or header.
	IdentityAsserted IdentityMode = "asserted"
	// IdentityRequired: every call must carry an authenticated identity in
	// its context; one without is refused with ErrUnauthenticated.
	IdentityRequired IdentityMode = "required"
)

// ErrIdentityHeader reports a Nats-Request-Info header that cannot be
// trusted or used.
var ErrIdentityHeader = errors.New("unusable Nats-Request-Info header")

// requestInfo is the part of nats-server's ClientInfo guardian reads.
type requestInfo struct {
	Account string   `json:"acc"`
	User    string   `json:"user"`
	NameTag string   `json:"name_tag"`
	Tags    []string `json:"tags"`
}

// IdentityFromRequestInfo parses a Nats-Request-Info header value into a
// SourceNATS identity. own is the account guardian's connection is in:
// nats-server stamps only requests from other accounts, so a header that
// names own (or has no account) was written by a client of guardian's
// account and is refused. A header without a user came through an import
// without share: true. Both refusals, and a header that is not JSON, return
// an error wrapping ErrIdentityHeader.
func IdentityFromRequestInfo(value, own string) (Identity, error) {
	var ri requestInfo
	if err := json.Unmarshal([]byte(value), &ri); err != nil {
		return Identity{}, fmt.Errorf("%w: %v", ErrIdentityHeader, err)
	}
	switch {
	case ri.Account == "":
		return Identity{}, fmt.Errorf("%w: no account", ErrIdentityHeader)
	case own != "" && ri.Account == own:
		return Identity{}, fmt.Errorf("%w: it names guardian's own account %s, which the server never stamps: a client wrote it", ErrIdentityHeader, own)
	case ri.User == "":
		return Identity{}, fmt.Errorf("%w: no user: import guardian's service with share: true", ErrIdentityHeader)
	}
	if ri.User == "[REDACTED]" {
		// Token authentication: the server names no user.
		return Identity{}, fmt.Errorf("%w: token authentication names no user; give each caller a user of its own", ErrIdentityHeader)
	}
	// name_tag is the name in the user's JWT; "name" is the connection
	// name the client chose, and is not used.
	name := ri.NameTag
	if len(ri.User) > MaxTextBytes || len(ri.Account) > MaxTextBytes || len(name) > MaxTextBytes {
		return Identity{}, fmt.Errorf("%w: a field exceeds %d bytes", ErrIdentityHeader, MaxTextBytes)
	}
	return Identity{Source: SourceNATS, Account: ri.Account, User: ri.User, Name: name, Tags: ri.Tags}, nil
}

// actor resolves who makes a call: the context's identity when it carries
// one (a body value that names someone else is refused with
// ErrIdentityMismatch), else, in IdentityAsserted mode, the body value
// (required). In IdentityRequired mode a call without an identity is
// refused with ErrUnauthenticated.
func (s *Service) actor(ctx context.Context, field, body string) (string, *Identity, error) {
	if id, ok := IdentityFrom(ctx); ok {
		if body != "" && body != id.User {
			return "", nil, fmt.Errorf("%w: %s is %q, but the caller is %s", ErrIdentityMismatch, field, truncate(body, 80), id.String())
		}
		return id.User, &id, nil
	}
	if s.cfg.Identity == IdentityRequired {
		return "", nil, fmt.Errorf("%w: no authenticated identity (guardian requires one: call it through a service import with share: true)", ErrUnauthenticated)
	}
	if err := checkText(field, body, true, MaxTextBytes); err != nil {
		return "", nil, err
	}
	return body, &Identity{Source: SourceAsserted, User: body}, nil
}

// principalKey identifies a voter, so that one principal counts once.
func principalKey(id *Identity) string {
	if id == nil {
		return ""
	}
	switch id.Source {
	case SourceAsserted:
		return "name:" + id.User
	case SourceOIDC:
		return "oidc:" + id.Subject
	}
	return id.Source + ":" + id.Account + "/" + id.User
}

func hasFold(list []string, v string) bool {
	return slices.ContainsFunc(list, func(x string) bool { return strings.EqualFold(x, v) })
}
