package kvapprovals

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/pkg/jsguard"
)

// List returns a page of tenant's approvals ordered by id, optionally only
// those with in.Status. The whole listing runs under the ApprovalCheck
// budget; when that runs out it returns what it gathered with Partial set
// and a NextCursor to continue from, not an error (the timeout is still
// audited). Its cost grows with the tenant's retained records: it scans the
// tenant's keys and reads records until the page is full.
//
// It returns a *FieldError (ErrInvalidRequest) for a bad tenant, status,
// limit or cursor, the parent context's error when it is cancelled, or the
// jetstream error, wrapped.
func (s *Service) List(ctx context.Context, tenant string, in ListInput) (ListResult, error) {
	if err := checkName("tenant", tenant); err != nil {
		return ListResult{}, err
	}
	if in.Status != "" && !in.Status.valid() {
		return ListResult{}, invalid("status", "%q is not one of pending, approved, denied, cancelled, expired", truncate(string(in.Status), 40))
	}
	limit := in.Limit
	switch {
	case limit == 0:
		limit = DefaultListLimit
	case limit < 0 || limit > MaxListLimit:
		return ListResult{}, invalid("limit", "%d is out of range: must be >= 1 and <= %d", limit, MaxListLimit)
	}
	after, err := decodeCursor(in.Cursor)
	if err != nil {
		return ListResult{}, err
	}

	var (
		mu    sync.Mutex // the listing may be abandoned while the fallback reads
		items = []Record{}
		last  = after // the last id examined
	)
	snapshot := func(partial bool, next string) ListResult {
		mu.Lock()
		defer mu.Unlock()
		r := ListResult{Items: slices.Clone(items), Partial: partial}
		if next != "" {
			r.NextCursor = encodeCursor(next)
		} else if partial {
			r.NextCursor = in.Cursor
			if last != "" {
				r.NextCursor = encodeCursor(last)
			}
		}
		return r
	}
	prefix := tenant + "."
	ctx = withTenant(ctx, tenant)
	res, err := jsguard.DoFallback(ctx, s.g, jsguard.ApprovalCheck, "approval list "+s.cfg.RecordsBucket+"/"+tenant,
		func(ctx context.Context) (ListResult, error) {
			subjPrefix := "$KV." + s.cfg.RecordsBucket + "." + prefix
			var ids []string
			err := scanLatest(ctx, s.recordsStream, subjPrefix+"*", true, func(m jetstream.Msg) error {
				if id := strings.TrimPrefix(m.Subject(), subjPrefix); id > after && isEntry(m) {
					ids = append(ids, id)
				}
				return nil
			})
			if err != nil {
				return ListResult{}, err
			}
			slices.Sort(ids)
			for i, id := range ids {
				e, err := s.records.Raw().Get(ctx, prefix+id)
				if errors.Is(err, jetstream.ErrKeyNotFound) {
					continue
				}
				if err != nil {
					return ListResult{}, err
				}
				rec, err := decodeRecord(e.Value(), e.Revision())
				if err != nil {
					return ListResult{}, err
				}
				mu.Lock()
				last = id
				if in.Status == "" || rec.Status == in.Status {
					items = append(items, rec)
				}
				full := len(items) == limit
				mu.Unlock()
				if full {
					if i < len(ids)-1 {
						return snapshot(false, id), nil
					}
					break
				}
			}
			return snapshot(false, ""), nil
		},
		func(context.Context, *jsguard.TimeoutError) (ListResult, error) { return snapshot(true, ""), nil },
		jsguard.WithStrategy(jsguard.Graceful))
	if err != nil {
		return ListResult{}, fmt.Errorf("list %s: %w", tenant, err)
	}
	return res.Value, nil
}

func encodeCursor(id string) string { return base64.RawURLEncoding.EncodeToString([]byte(id)) }

func decodeCursor(c string) (string, error) {
	if c == "" {
		return "", nil
	}
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil || !nameRe.Match(b) {
		return "", invalid("cursor", "is not a cursor returned by list")
	}
	return string(b), nil
}
