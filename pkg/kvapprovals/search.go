package kvapprovals

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/pkg/jsguard"
)

// SearchInput selects approvals across tenants for people (a console, a
// report): every filter is optional and they combine. Results come newest
// request first (or soonest deadline first, ByExpiry), Limit at a time (0: DefaultListLimit, at most
// MaxListLimit); Cursor is a previous result's NextCursor.
type SearchInput struct {
	Tenant    string   // one tenant, or all
	Statuses  []Status // any of these, or all
	Requester string   // requested_by, exactly
	Decider   string   // decided_by, exactly
	Since     time.Time
	Until     time.Time // requested_at in [Since, Until)
	// Match, when set, keeps only the records it returns true for (before
	// paging), e.g. the tenants a person may see.
	Match func(*Record) bool `json:"-"`
	// ByExpiry orders by expires_at, soonest first, instead of newest
	// request first.
	ByExpiry bool
	Limit    int
	Cursor   string
}

// Search returns the approvals matching in, newest request first. It reads
// the latest revision of every record in scope (one tenant or all) under
// the ApprovalCheck budget, so its cost grows with the records retained;
// use List for a tenant's page by id. It returns a *FieldError for a bad
// tenant, status, limit or cursor, or the jetstream error or
// *jsguard.TimeoutError, wrapped.
func (s *Service) Search(ctx context.Context, in SearchInput) (ListResult, error) {
	filter := "$KV." + s.cfg.RecordsBucket + ".>"
	if in.Tenant != "" {
		if err := checkName("tenant", in.Tenant); err != nil {
			return ListResult{}, err
		}
		filter = "$KV." + s.cfg.RecordsBucket + "." + in.Tenant + ".*"
		ctx = withTenant(ctx, in.Tenant)
	}
	for _, st := range in.Statuses {
		if !st.valid() {
			return ListResult{}, invalid("status", "%q is not one of pending, approved, denied, cancelled, expired", truncate(string(st), 40))
		}
	}
	limit := in.Limit
	switch {
	case limit == 0:
		limit = DefaultListLimit
	case limit < 0 || limit > MaxListLimit:
		return ListResult{}, invalid("limit", "%d is out of range: must be >= 1 and <= %d", limit, MaxListLimit)
	}
	offset := 0
	if in.Cursor != "" {
		c, err := decodeCursor(in.Cursor)
		n, aerr := strconv.Atoi(c)
		if err != nil || aerr != nil || n < 0 {
			return ListResult{}, invalid("cursor", "not a cursor this search returned")
		}
		offset = n
	}
	var all []Record
	err := s.g.Do(ctx, jsguard.ApprovalCheck, "approval search "+s.cfg.RecordsBucket, func(ctx context.Context) error {
		return scanLatest(ctx, s.recordsStream, filter, false, func(m jetstream.Msg) error {
			if !isEntry(m) {
				return nil
			}
			md, err := m.Metadata()
			if err != nil {
				return err
			}
			r, err := decodeRecord(m.Data(), md.Sequence.Stream)
			if err != nil {
				return nil // not an approval record: skipped
			}
			if in.match(&r) {
				all = append(all, r)
			}
			return nil
		})
	})
	if err != nil {
		return ListResult{}, fmt.Errorf("search: %w", err)
	}
	slices.SortFunc(all, func(a, b Record) int {
		c := b.RequestedAt.Compare(a.RequestedAt)
		if in.ByExpiry {
			c = a.ExpiresAt.Compare(b.ExpiresAt)
		}
		if c != 0 {
			return c
		}
		return strings.Compare(a.Key(), b.Key())
	})
	res := ListResult{Items: []Record{}}
	if offset < len(all) {
		end := min(offset+limit, len(all))
		res.Items = all[offset:end]
		if end < len(all) {
			res.NextCursor = encodeCursor(strconv.Itoa(end))
		}
	}
	return res, nil
}

func (in *SearchInput) match(r *Record) bool {
	switch {
	case len(in.Statuses) > 0 && !slices.Contains(in.Statuses, r.Status),
		in.Requester != "" && r.RequestedBy != in.Requester,
		in.Decider != "" && r.DecidedBy != in.Decider,
		!in.Since.IsZero() && r.RequestedAt.Before(in.Since),
		!in.Until.IsZero() && !r.RequestedAt.Before(in.Until),
		in.Match != nil && !in.Match(r):
		return false
	}
	return true
}

// Revisions returns every retained revision of an approval, oldest first;
// each is one lifecycle event (see Record.Kind). It returns a *FieldError
// for a malformed tenant or id, ErrNotFound, or the jetstream error or
// *jsguard.TimeoutError, wrapped.
func (s *Service) Revisions(ctx context.Context, tenant, id string) ([]Record, error) {
	if err := checkName("tenant", tenant); err != nil {
		return nil, err
	}
	if err := checkName("id", id); err != nil {
		return nil, err
	}
	key := tenant + "." + id
	hist, err := jsguard.DoValue(withTenant(ctx, tenant), s.g, jsguard.ApprovalCheck, "approval history "+s.cfg.RecordsBucket+"/"+key,
		func(ctx context.Context) ([]jetstream.KeyValueEntry, error) { return s.records.Raw().History(ctx, key) })
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, fmt.Errorf("revisions of %s: %w", key, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("revisions of %s: %w", key, err)
	}
	var out []Record
	for _, e := range hist {
		if e.Operation() != jetstream.KeyValuePut {
			continue
		}
		r, err := decodeRecord(e.Value(), e.Revision())
		if err != nil {
			return nil, fmt.Errorf("revisions of %s: %w", key, err)
		}
		out = append(out, r)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("revisions of %s: %w", key, ErrNotFound)
	}
	return out, nil
}
