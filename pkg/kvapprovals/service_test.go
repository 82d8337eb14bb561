package kvapprovals

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/pkg/jsguard"
)

func TestConfigValidate(t *testing.T) {
	def := DefaultConfig()
	if err := def.Validate(); err != nil {
		t.Fatalf("DefaultConfig: %v", err)
	}
	tests := []struct {
		field  string
		mutate func(*Config)
	}{
		{"MinTimeout", func(c *Config) { c.MinTimeout = 500 * time.Millisecond }},
		{"DefaultTimeout", func(c *Config) { c.DefaultTimeout = 0 }},
		{"MaxTimeout", func(c *Config) { c.MaxTimeout = 10 * time.Minute }},
		{"MaxTimeout", func(c *Config) { c.MaxTimeout = 25 * time.Hour }},
		{"GracePeriod", func(c *Config) { c.GracePeriod = -time.Second }},
		{"GracePeriod", func(c *Config) { c.GracePeriod = 61 * time.Second }},
		{"WarningBefore", func(c *Config) { c.WarningBefore = 0 }},
		{"MaxPending", func(c *Config) { c.MaxPending = -1 }},
		{"MaxDetailsBytes", func(c *Config) { c.MaxDetailsBytes = 0 }},
		{"MaxDetailsBytes", func(c *Config) { c.MaxDetailsBytes = 1 << 20 }},
		{"Retention", func(c *Config) { c.Retention = 2 * time.Hour }},
		{"MaxOutage", func(c *Config) { c.MaxOutage = 0 }},
		{"EventsDuplicates", func(c *Config) { c.EventsDuplicates = time.Second }},
		{"Replicas", func(c *Config) { c.Replicas = 0 }},
		{"Replicas", func(c *Config) { c.Replicas = 7 }},
		{"RecordsBucket", func(c *Config) { c.RecordsBucket = "a.b" }},
		{"TimersStream", func(c *Config) { c.TimersStream = "KV_" + c.RecordsBucket }},
		{"TimersStream", func(c *Config) { c.TimersStream = c.EventsStream }},
		{"EventsStream", func(c *Config) { c.EventsStream = "" }},
		{"EventsSubjectPrefix", func(c *Config) { c.EventsSubjectPrefix = "a.>" }},
		{"ExpirerDurable", func(c *Config) { c.ExpirerDurable = "x y" }},
	}
	for _, tt := range tests {
		t.Run(tt.field, func(t *testing.T) {
			c := DefaultConfig()
			tt.mutate(&c)
			err := c.Validate()
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("err = %v, want ErrInvalidConfig", err)
			}
			if !strings.Contains(err.Error(), tt.field) {
				t.Errorf("error %q does not name %s", err, tt.field)
			}
		})
	}
	// Warnings off: WarningBefore is not checked.
	c := DefaultConfig()
	c.SendTimeoutWarnings, c.WarningBefore = false, 0
	if err := c.Validate(); err != nil {
		t.Errorf("warnings off: %v", err)
	}
}

func TestDecode(t *testing.T) {
	tests := []struct {
		name  string
		doc   string
		field string // "" means valid
	}{
		{"valid", `{"id":"a1","session_id":"s","requested_by":"u","details":{"k":1},"timeout":"90s"}`, ""},
		{"minimal", `{"session_id":"s","requested_by":"u"}`, ""},
		{"unknown field", `{"session_id":"s","requested_by":"u","extra":1}`, "extra"},
		{"wrong type", `{"session_id":5}`, "session_id"},
		{"bad duration", `{"timeout":"soon"}`, "timeout"},
		{"numeric duration", `{"timeout":90}`, "timeout"},
		{"trailing data", `{"session_id":"s"} {}`, "body"},
		{"not an object", `[1,2]`, "body"},
		{"malformed", `{"session_id":`, "body"},
		{"empty", ``, "body"},
		{"invalid utf8", "{\"session_id\":\"\xff\"}", "body"},
		{"too large", `{"session_id":"` + strings.Repeat("x", MaxInputBytes) + `"}`, "body"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in, err := DecodeRequest([]byte(tt.doc))
			if tt.field == "" {
				if err != nil {
					t.Fatalf("err = %v", err)
				}
				return
			}
			var fe *FieldError
			if !errors.Is(err, ErrInvalidRequest) || !errors.As(err, &fe) {
				t.Fatalf("err = %v, want a *FieldError", err)
			}
			if fe.Field != tt.field {
				t.Errorf("field = %q, want %q (%v)", fe.Field, tt.field, err)
			}
			if in.SessionID != "" {
				t.Errorf("a failed decode returned data: %+v", in)
			}
		})
	}
	in, err := DecodeRequest([]byte(`{"timeout":"1m30s","details":{"a":[1,2]}}`))
	if err != nil || time.Duration(in.Timeout) != 90*time.Second || string(in.Details) != `{"a":[1,2]}` {
		t.Errorf("decode = %+v, %v", in, err)
	}
	if _, err := DecodeDecision([]byte(`{"id":"a","decided_by":"b","reason":"ok"}`)); err != nil {
		t.Error(err)
	}
	if _, err := DecodeCancel([]byte(`{"id":"a","decided_by":"b"}`)); !errors.Is(err, ErrInvalidRequest) {
		t.Errorf("cancel with decided_by: %v", err)
	}
	if _, err := DecodeGet([]byte(`{"id":"a"}`)); err != nil {
		t.Error(err)
	}
	if l, err := DecodeList([]byte(`{"status":"pending","limit":5,"cursor":"x"}`)); err != nil || l.Limit != 5 {
		t.Errorf("list = %+v, %v", l, err)
	}
}

func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{`{"session_id":"s","requested_by":"u"}`, `{"timeout":"1s","details":{}}`, `[]`, `{"x":1}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		in, err := DecodeRequest(b)
		if err != nil {
			if !errors.Is(err, ErrInvalidRequest) {
				t.Fatalf("error %v does not match ErrInvalidRequest", err)
			}
			return
		}
		if _, err := json.Marshal(in); err != nil {
			t.Fatalf("decoded input does not encode: %v", err)
		}
	})
}

func TestRequest(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx := t.Context()
	r, err := e.svc.Request(ctx, "acme", RequestInput{
		SessionID: "s1", RequestedBy: "alice", OperatorID: "op", Details: json.RawMessage(`{ "cmd" : "rm -rf /tmp/x" }`),
	})
	if err != nil {
		t.Fatal(err)
	}
	if !nameRe.MatchString(r.ID) || r.Tenant != "acme" || r.Status != StatusPending || r.Revision == 0 {
		t.Errorf("record = %+v", r)
	}
	if time.Duration(r.Timeout) != e.cfg.DefaultTimeout || !r.ExpiresAt.Equal(r.RequestedAt.Add(e.cfg.DefaultTimeout)) {
		t.Errorf("timeout %s, requested %s, expires %s", time.Duration(r.Timeout), r.RequestedAt, r.ExpiresAt)
	}
	if string(r.Details) != `{"cmd":"rm -rf /tmp/x"}` {
		t.Errorf("details not compacted: %s", r.Details)
	}
	got := e.get("acme", r.ID)
	if got.Revision != r.Revision || !got.RequestedAt.Equal(r.RequestedAt) || string(got.Details) != string(r.Details) {
		t.Errorf("get = %+v, want %+v", got, r)
	}
	// The stored JSON has exactly the documented fields.
	entry, err := e.svc.records.Get(ctx, r.Key())
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(entry.Value(), &m); err != nil {
		t.Fatal(err)
	}
	var fields []string
	for k := range m {
		fields = append(fields, k)
	}
	slices.Sort(fields)
	want := []string{"decided_at", "decided_by", "details", "expires_at", "id", "operator_id", "reason", "requested_at", "requested_by", "requester", "revision", "session_id", "status", "tenant", "timeout", "warned_at"}
	if !slices.Equal(fields, want) {
		t.Errorf("record fields = %v, want %v", fields, want)
	}
	if m["timeout"] != "2s" || !strings.HasSuffix(m["expires_at"].(string), "Z") {
		t.Errorf("timeout %v expires_at %v: want a duration string and UTC", m["timeout"], m["expires_at"])
	}
	// Timers are chained, one live at a time: a request arms the warn
	// timer (at expires_at - WarningBefore) when a warning is scheduled,
	// else the expire timer (at expires_at + grace), to the millisecond.
	r2 := e.request("acme", RequestInput{ID: "frac", SessionID: "s", RequestedBy: "u", Timeout: Duration(2500 * time.Millisecond)})
	// No warning when the timeout is not longer than WarningBefore.
	r3 := e.request("acme", RequestInput{ID: "short", SessionID: "s", RequestedBy: "u", Timeout: Duration(time.Second)})
	r4 := e.request("acme", RequestInput{ID: "short-frac", SessionID: "s", RequestedBy: "u", Timeout: Duration(1500 * time.Millisecond)})
	tests := []struct {
		key string
		at  time.Time
	}{
		{r.Key() + ".warn", r.ExpiresAt.Add(-e.cfg.WarningBefore)},
		{r2.Key() + ".warn", r2.ExpiresAt.Add(-e.cfg.WarningBefore)},
		{r3.Key() + ".expire", r3.Deadline(e.cfg.GracePeriod)},
		{r4.Key() + ".warn", r4.ExpiresAt.Add(-e.cfg.WarningBefore)},
	}
	for _, tt := range tests {
		m, err := e.svc.timers.str.GetLastMsgForSubject(ctx, e.svc.timers.sched(tt.key))
		if err != nil {
			t.Fatalf("timer %s: %v", tt.key, err)
		}
		at, err := time.Parse(time.RFC3339Nano, strings.TrimPrefix(m.Header.Get(jetstream.ScheduleHeader), "@at "))
		if err != nil {
			t.Fatalf("timer %s: schedule %q: %v", tt.key, m.Header.Get(jetstream.ScheduleHeader), err)
		}
		// The instant, timerLead ahead, is moved from the record's clock
		// to the wall clock at arming; both are time.Now here, so it moves
		// by the time the request took until then: never earlier, and no
		// whole second. The fire carries the moment itself.
		if d := at.Sub(tt.at.Add(-timerLead)); d < 0 || d >= 500*time.Millisecond {
			t.Errorf("timer %s fires at %s, want %s or within 500ms after it", tt.key, at, tt.at.Add(-timerLead))
		}
		if due, err := time.Parse(time.RFC3339Nano, m.Header.Get(dueHeader)); err != nil || !due.Equal(tt.at) {
			t.Errorf("timer %s is due at %s (%v), want %s", tt.key, due, err, tt.at)
		}
		if got, want := m.Header.Get(jetstream.ScheduleTargetHeader), e.svc.timers.fire(tt.key); got != want {
			t.Errorf("timer %s target = %q, want %q", tt.key, got, want)
		}
	}
	keys := e.timerKeys()
	slices.Sort(keys)
	wantKeys := []string{r.Key() + ".warn", r2.Key() + ".warn", r3.Key() + ".expire", r4.Key() + ".warn"}
	slices.Sort(wantKeys)
	if !slices.Equal(keys, wantKeys) {
		t.Errorf("timers = %v, want one per approval: %v", keys, wantKeys)
	}
}

func TestRequestBadInputChangesNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ok := req("a1")
	tests := []struct {
		name   string
		tenant string
		mutate func(*RequestInput)
		field  string
	}{
		{"empty tenant", "", nil, "tenant"},
		{"tenant with dot", "a.b", nil, "tenant"},
		{"tenant wildcard", "*", nil, "tenant"},
		{"long tenant", strings.Repeat("t", 65), nil, "tenant"},
		{"reserved tenant audit", "audit", nil, "tenant"},
		{"reserved tenant events", "events", nil, "tenant"},
		{"bad id", "acme", func(in *RequestInput) { in.ID = "a b" }, "id"},
		{"id with dot", "acme", func(in *RequestInput) { in.ID = "a.b" }, "id"},
		{"no session", "acme", func(in *RequestInput) { in.SessionID = "" }, "session_id"},
		{"no requester", "acme", func(in *RequestInput) { in.RequestedBy = "" }, "requested_by"},
		{"long operator", "acme", func(in *RequestInput) { in.OperatorID = strings.Repeat("o", MaxTextBytes+1) }, "operator_id"},
		{"timeout too short", "acme", func(in *RequestInput) { in.Timeout = Duration(500 * time.Millisecond) }, "timeout"},
		{"timeout negative", "acme", func(in *RequestInput) { in.Timeout = Duration(-time.Second) }, "timeout"},
		{"timeout too long", "acme", func(in *RequestInput) { in.Timeout = Duration(3 * time.Hour) }, "timeout"},
		{"details array", "acme", func(in *RequestInput) { in.Details = json.RawMessage(`[1]`) }, "details"},
		{"details string", "acme", func(in *RequestInput) { in.Details = json.RawMessage(`"x"`) }, "details"},
		{"details malformed", "acme", func(in *RequestInput) { in.Details = json.RawMessage(`{"a":`) }, "details"},
		{"details too big", "acme", func(in *RequestInput) {
			in.Details = json.RawMessage(`{"a":"` + strings.Repeat("x", 16<<10) + `"}`)
		}, "details"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := ok
			if tt.mutate != nil {
				tt.mutate(&in)
			}
			_, err := e.svc.Request(t.Context(), tt.tenant, in)
			var fe *FieldError
			if !errors.As(err, &fe) || !errors.Is(err, ErrInvalidRequest) || fe.Field != tt.field {
				t.Fatalf("err = %v, want ErrInvalidRequest on %s", err, tt.field)
			}
		})
	}
	if k := e.recordKeys(); len(k) != 0 {
		t.Errorf("bad requests wrote records: %v", k)
	}
	if k := e.timerKeys(); len(k) != 0 {
		t.Errorf("bad requests wrote timers: %v", k)
	}
	if s := e.svc.Stats(); s.Requested != 0 {
		t.Errorf("stats = %+v", s)
	}
}

func TestRequestIdempotent(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *Config) { c.DefaultTimeout = time.Hour })
	ctx := t.Context()
	in := RequestInput{ID: "r1", SessionID: "s", RequestedBy: "alice", Details: json.RawMessage(`{"a":1}`)}
	first := e.request("acme", in)

	// Same content (details formatted differently, timeout explicit
	// default): the same approval.
	again := in
	again.Details = json.RawMessage(`{ "a" : 1 }`)
	again.Timeout = Duration(time.Hour)
	second, err := e.svc.Request(ctx, "acme", again)
	if err != nil {
		t.Fatalf("retry: %v", err)
	}
	if second.Revision != first.Revision || !second.RequestedAt.Equal(first.RequestedAt) {
		t.Errorf("retry = %+v, want the first %+v", second, first)
	}
	if n := len(e.history(first.Key())); n != 1 {
		t.Errorf("retry wrote: %d revisions", n)
	}

	// Other content: a conflict.
	for _, mutate := range []func(*RequestInput){
		func(in *RequestInput) { in.SessionID = "other" },
		func(in *RequestInput) { in.RequestedBy = "bob" },
		func(in *RequestInput) { in.OperatorID = "op" },
		func(in *RequestInput) { in.Details = nil },
		func(in *RequestInput) { in.Timeout = Duration(time.Minute) },
	} {
		other := in
		mutate(&other)
		if _, err := e.svc.Request(ctx, "acme", other); !errors.Is(err, ErrConflict) {
			t.Errorf("request %+v: err = %v, want ErrConflict", other, err)
		}
	}

	// A crash after the record write lost the timer: the retry repairs it.
	if err := e.svc.timers.disarm(ctx, first.Key()+".warn"); err != nil {
		t.Fatal(err)
	}
	if len(e.timerKeys()) != 0 {
		t.Fatalf("timers not removed: %v", e.timerKeys())
	}
	if _, err := e.svc.Request(ctx, "acme", in); err != nil {
		t.Fatalf("repairing retry: %v", err)
	}
	keys := e.timerKeys()
	slices.Sort(keys)
	if want := []string{"acme.r1.warn"}; !slices.Equal(keys, want) {
		t.Errorf("timers after repair = %v, want %v", keys, want)
	}
	if s := e.svc.Stats(); s.TimersRepaired != 1 || s.Requested != 1 {
		t.Errorf("stats = %+v, want 1 repaired, 1 requested", s)
	}

	// A retry of a decided approval returns it and re-arms nothing.
	if _, err := e.svc.Approve(ctx, "acme", DecisionInput{ID: "r1", DecidedBy: "bob"}); err != nil {
		t.Fatal(err)
	}
	r, err := e.svc.Request(ctx, "acme", in)
	if err != nil || r.Status != StatusApproved {
		t.Fatalf("retry after approval = %+v, %v", r, err)
	}
	if k := e.timerKeys(); len(k) != 0 {
		t.Errorf("timers after decision and retry: %v", k)
	}
}

func TestDecisions(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *Config) { c.DefaultTimeout = time.Hour })
	ctx := t.Context()
	type op func(id, by, reason string) (Record, error)
	approve := func(id, by, reason string) (Record, error) {
		return e.svc.Approve(ctx, "acme", DecisionInput{ID: id, DecidedBy: by, Reason: reason})
	}
	deny := func(id, by, reason string) (Record, error) {
		return e.svc.Deny(ctx, "acme", DecisionInput{ID: id, DecidedBy: by, Reason: reason})
	}
	cancel := func(id, by, reason string) (Record, error) {
		return e.svc.Cancel(ctx, "acme", CancelInput{ID: id, CancelledBy: by, Reason: reason})
	}
	tests := []struct {
		name string
		op   op
		want Status
	}{
		{"approve", approve, StatusApproved},
		{"deny", deny, StatusDenied},
		{"cancel", cancel, StatusCancelled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := "d-" + tt.name
			e.request("acme", req(id))
			r, err := tt.op(id, "bob", "looks fine")
			if err != nil {
				t.Fatal(err)
			}
			if r.Status != tt.want || r.DecidedBy != "bob" || r.DecidedAt == nil || r.Reason != "looks fine" {
				t.Errorf("record = %+v", r)
			}
			if got := e.get("acme", id); got.Status != tt.want || got.Revision != r.Revision {
				t.Errorf("stored = %+v", got)
			}
			// Timers are purged.
			for _, k := range e.timerKeys() {
				if strings.HasPrefix(k, "acme."+id+".") {
					t.Errorf("timer %s left after %s", k, tt.name)
				}
			}
			// Every later decision is refused with the final status.
			for _, later := range []op{approve, deny, cancel} {
				_, err := later(id, "carol", "")
				var se *StateError
				if !errors.Is(err, ErrAlreadyDecided) || !errors.As(err, &se) {
					t.Fatalf("second decision: err = %v, want ErrAlreadyDecided", err)
				}
				if se.Record.Status != tt.want || !strings.Contains(err.Error(), string(tt.want)) {
					t.Errorf("StateError %q, record status %s, want %s", err, se.Record.Status, tt.want)
				}
				if errors.Is(err, ErrExpired) {
					t.Errorf("%v matches ErrExpired", err)
				}
			}
			if n := len(e.history("acme." + id)); n != 2 {
				t.Errorf("%d revisions, want 2", n)
			}
		})
	}

	e.request("acme", req("self"))
	errTests := []struct {
		name  string
		op    op
		id    string
		by    string
		want  error
		field string
	}{
		{"not found", approve, "nope", "bob", ErrNotFound, ""},
		{"self approval", approve, "self", "alice", ErrSelfApproval, ""},
		{"bad id", approve, "a.b", "bob", ErrInvalidRequest, "id"},
		{"empty id", deny, "", "bob", ErrInvalidRequest, "id"},
		{"no decider", approve, "self", "", ErrInvalidRequest, "decided_by"},
		{"no canceller", cancel, "self", "", ErrInvalidRequest, "cancelled_by"},
		{"long decider", deny, "self", strings.Repeat("b", MaxTextBytes+1), ErrInvalidRequest, "decided_by"},
	}
	for _, tt := range errTests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.op(tt.id, tt.by, "")
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			var fe *FieldError
			if tt.field != "" && (!errors.As(err, &fe) || fe.Field != tt.field) {
				t.Errorf("err = %v, want field %s", err, tt.field)
			}
		})
	}
	if _, err := e.svc.Approve(ctx, "a.b", DecisionInput{ID: "x", DecidedBy: "bob"}); !errors.Is(err, ErrInvalidRequest) {
		t.Errorf("bad tenant: %v", err)
	}
	if r := e.get("acme", "self"); r.Status != StatusPending || len(e.history("acme.self")) != 1 {
		t.Errorf("refused decisions changed the record: %+v", r)
	}
	// The requester may deny (withdraw) its own request.
	if _, err := deny("self", "alice", ""); err != nil {
		t.Errorf("self deny: %v", err)
	}
}

func TestDecisionOptions(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *Config) {
		c.DefaultTimeout = time.Hour
		c.RequireReason = true
		c.AllowSelfApproval = true
	})
	ctx := t.Context()
	e.request("acme", req("r"))
	_, err := e.svc.Approve(ctx, "acme", DecisionInput{ID: "r", DecidedBy: "alice"})
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "reason" {
		t.Fatalf("no reason: err = %v, want a reason FieldError", err)
	}
	if _, err := e.svc.Cancel(ctx, "acme", CancelInput{ID: "r", CancelledBy: "alice"}); !errors.Is(err, ErrInvalidRequest) {
		t.Fatalf("cancel without reason: %v", err)
	}
	r, err := e.svc.Approve(ctx, "acme", DecisionInput{ID: "r", DecidedBy: "alice", Reason: "urgent fix"})
	if err != nil || r.Status != StatusApproved {
		t.Fatalf("self approval allowed: %+v, %v", r, err)
	}
}

// TestGrace checks the decision boundary exactly with a settable clock: a
// decision at expires_at + grace succeeds, one a nanosecond later fails.
func TestGrace(t *testing.T) {
	t.Parallel()
	clk := &clock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	e := newEnv(t, func(c *Config) { c.GracePeriod = 30 * time.Second }, WithClock(clk.Now))
	ctx := t.Context()
	t0 := clk.Now()
	timeout := time.Minute
	tests := []struct {
		name  string
		at    time.Duration // after t0
		op    string
		want  Status
		error error
	}{
		{"before expiry", 59 * time.Second, "approve", StatusApproved, nil},
		{"inside grace", 75 * time.Second, "approve", StatusApproved, nil},
		{"at deadline", 90 * time.Second, "approve", StatusApproved, nil},
		{"after deadline", 90*time.Second + time.Nanosecond, "approve", "", ErrExpired},
		{"deny after deadline", 91 * time.Second, "deny", "", ErrExpired},
		{"cancel after deadline", 91 * time.Second, "cancel", "", ErrExpired},
		{"deny inside grace", 89 * time.Second, "deny", StatusDenied, nil},
		{"cancel inside grace", 89 * time.Second, "cancel", StatusCancelled, nil},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk.Set(t0)
			id := fmt.Sprintf("g%d", i)
			e.request("acme", RequestInput{ID: id, SessionID: "s", RequestedBy: "alice", Timeout: Duration(timeout)})
			clk.Set(t0.Add(tt.at))
			var r Record
			var err error
			switch tt.op {
			case "approve":
				r, err = e.svc.Approve(ctx, "acme", DecisionInput{ID: id, DecidedBy: "bob"})
			case "deny":
				r, err = e.svc.Deny(ctx, "acme", DecisionInput{ID: id, DecidedBy: "bob"})
			case "cancel":
				r, err = e.svc.Cancel(ctx, "acme", CancelInput{ID: id, CancelledBy: "alice"})
			}
			if tt.error != nil {
				var se *StateError
				if !errors.Is(err, tt.error) || !errors.As(err, &se) || se.Record.Status != StatusPending {
					t.Fatalf("err = %v, want %v with the pending record", err, tt.error)
				}
				if errors.Is(err, ErrAlreadyDecided) {
					t.Errorf("%v also matches ErrAlreadyDecided", err)
				}
				if got := e.get("acme", id); got.Status != StatusPending {
					t.Errorf("refused decision changed the record: %+v", got)
				}
				return
			}
			if err != nil || r.Status != tt.want || !r.DecidedAt.Equal(t0.Add(tt.at)) {
				t.Fatalf("record = %+v, err = %v", r, err)
			}
		})
	}
}

func TestMaxPending(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *Config) {
		c.MaxPending = 3
		c.DefaultTimeout = time.Hour
	})
	ctx := t.Context()
	for i := range 3 {
		e.request("acme", req(fmt.Sprint("p", i)))
	}
	_, err := e.svc.Request(ctx, "acme", req("p3"))
	if !errors.Is(err, ErrTooManyPending) {
		t.Fatalf("4th request: err = %v, want ErrTooManyPending", err)
	}
	if _, err := e.svc.Get(ctx, "acme", "p3"); !errors.Is(err, ErrNotFound) {
		t.Errorf("refused request wrote a record: %v", err)
	}
	// A retry of an existing approval is not a new one.
	if r, err := e.svc.Request(ctx, "acme", req("p1")); err != nil || r.ID != "p1" {
		t.Errorf("retry at the cap: %+v, %v", r, err)
	}
	// Bad input is still a bad request.
	if _, err := e.svc.Request(ctx, "acme", RequestInput{}); !errors.Is(err, ErrInvalidRequest) {
		t.Errorf("bad input at the cap: %v", err)
	}
	// Other tenants have their own cap.
	e.request("other", req("o1"))
	// A decision makes room at once.
	if _, err := e.svc.Approve(ctx, "acme", DecisionInput{ID: "p0", DecidedBy: "bob"}); err != nil {
		t.Fatal(err)
	}
	e.request("acme", req("p3"))
	if _, err := e.svc.Request(ctx, "acme", req("p4")); !errors.Is(err, ErrTooManyPending) {
		t.Fatalf("after refill: err = %v, want ErrTooManyPending", err)
	}
	// A second replica counts from the timers stream.
	other := e.open()
	if _, err := other.Request(ctx, "acme", req("p5")); !errors.Is(err, ErrTooManyPending) {
		t.Errorf("second replica: err = %v, want ErrTooManyPending", err)
	}
}

func TestGetAndList(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *Config) { c.DefaultTimeout = time.Hour })
	ctx := t.Context()
	want := map[Status][]string{}
	for i := range 25 {
		id := fmt.Sprintf("l%02d", i)
		e.request("acme", req(id))
		st := StatusPending
		switch i % 4 {
		case 1:
			st = StatusApproved
			_, _ = e.svc.Approve(ctx, "acme", DecisionInput{ID: id, DecidedBy: "bob"})
		case 2:
			st = StatusDenied
			_, _ = e.svc.Deny(ctx, "acme", DecisionInput{ID: id, DecidedBy: "bob"})
		}
		want[st] = append(want[st], id)
		want[""] = append(want[""], id)
	}
	e.request("other", req("x"))
	if _, err := e.svc.Get(ctx, "other", "l00"); !errors.Is(err, ErrNotFound) {
		t.Errorf("get across tenants: %v", err)
	}

	for _, st := range []Status{"", StatusPending, StatusApproved, StatusDenied, StatusExpired} {
		t.Run("status="+string(st), func(t *testing.T) {
			var got []string
			cursor := ""
			for page := 0; ; page++ {
				res, err := e.svc.List(ctx, "acme", ListInput{Status: st, Limit: 4, Cursor: cursor})
				if err != nil {
					t.Fatal(err)
				}
				if res.Partial || len(res.Items) > 4 || res.Items == nil {
					t.Fatalf("page %d = %+v", page, res)
				}
				for _, r := range res.Items {
					if st != "" && r.Status != st {
						t.Errorf("item %s has status %s", r.ID, r.Status)
					}
					got = append(got, r.ID)
				}
				if res.NextCursor == "" {
					break
				}
				cursor = res.NextCursor
			}
			if !slices.Equal(got, want[st]) {
				t.Errorf("listed %v, want %v", got, want[st])
			}
		})
	}

	bad := []struct {
		in    ListInput
		field string
	}{
		{ListInput{Status: "done"}, "status"},
		{ListInput{Limit: -1}, "limit"},
		{ListInput{Limit: MaxListLimit + 1}, "limit"},
		{ListInput{Cursor: "!!"}, "cursor"},
		{ListInput{Cursor: encodeCursor("a.b")}, "cursor"},
	}
	for _, tt := range bad {
		_, err := e.svc.List(ctx, "acme", tt.in)
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != tt.field {
			t.Errorf("list %+v: err = %v, want field %s", tt.in, err, tt.field)
		}
	}
	if _, err := e.svc.List(ctx, "*", ListInput{}); !errors.Is(err, ErrInvalidRequest) {
		t.Errorf("list tenant *: %v", err)
	}
	res, err := e.svc.List(ctx, "nobody", ListInput{})
	if err != nil || len(res.Items) != 0 || res.Items == nil {
		t.Errorf("empty tenant: %+v, %v", res, err)
	}
}

// TestListPartial runs List under a budget too small to finish: it returns
// what it gathered with partial set, and following the cursors still lists
// everything exactly once.
func TestListPartial(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *Config) { c.DefaultTimeout = time.Hour })
	ctx := t.Context()
	for i := range 200 {
		e.request("acme", req(fmt.Sprintf("q%03d", i)))
	}
	p := jsguard.DefaultPolicy()
	p.Budgets[jsguard.ApprovalCheck] = 3 * time.Millisecond
	if err := e.g.SetPolicy(p); err != nil {
		t.Fatal(err)
	}
	before := len(e.audit.byCode(jsguard.ApprovalCheck.Code()))
	seen := map[string]int{}
	partials := 0
	cursor := ""
	for range 2000 {
		if partials == 5 {
			if err := e.g.SetPolicy(jsguard.DefaultPolicy()); err != nil { // let it finish
				t.Fatal(err)
			}
		}
		res, err := e.svc.List(ctx, "acme", ListInput{Limit: 1000, Cursor: cursor})
		if err != nil {
			t.Fatalf("list: %v", err)
		}
		if res.Partial {
			partials++
		}
		for _, r := range res.Items {
			seen[r.ID]++
		}
		if res.NextCursor == "" && !res.Partial {
			break
		}
		cursor = res.NextCursor
	}
	if partials == 0 {
		t.Fatalf("no partial result with a 3ms budget")
	}
	if len(seen) != 200 {
		t.Errorf("listed %d distinct approvals, want 200", len(seen))
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("%s listed %d times", id, n)
		}
	}
	if after := len(e.audit.byCode(jsguard.ApprovalCheck.Code())); after <= before {
		t.Errorf("partial listings were not audited")
	}
	t.Logf("%d partial pages", partials)
}

// TestTimeouts: a NATS call that runs out of its budget returns the
// *jsguard.TimeoutError (wrapped) and is audited once, with the tenant.
func TestTimeouts(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *Config) { c.DefaultTimeout = time.Hour })
	ctx := t.Context()
	e.request("acme", req("t1"))
	p := jsguard.DefaultPolicy()
	p.Budgets[jsguard.ApprovalCheck] = time.Microsecond
	if err := e.g.SetPolicy(p); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		call func() error
	}{
		{"get", func() error { _, err := e.svc.Get(ctx, "acme", "t1"); return err }},
		{"approve", func() error {
			_, err := e.svc.Approve(ctx, "acme", DecisionInput{ID: "t1", DecidedBy: "bob"})
			return err
		}},
		{"pending", func() error { _, err := e.svc.Pending(ctx, "acme"); return err }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(e.audit.byCode(jsguard.ApprovalCheck.Code()))
			err := tt.call()
			var te *jsguard.TimeoutError
			if !errors.As(err, &te) || !errors.Is(err, context.DeadlineExceeded) || te.Code != "TIMEOUT_APPROVAL_CHECK" {
				t.Fatalf("err = %v, want a TIMEOUT_APPROVAL_CHECK *jsguard.TimeoutError", err)
			}
			evs := e.audit.byCode(jsguard.ApprovalCheck.Code())
			if len(evs) != before+1 || evs[len(evs)-1].TenantID != "acme" {
				t.Errorf("audit events %d -> %d, last %+v", before, len(evs), evs[len(evs)-1])
			}
		})
	}
	if err := e.g.SetPolicy(jsguard.DefaultPolicy()); err != nil {
		t.Fatal(err)
	}
	if r := e.get("acme", "t1"); r.Status != StatusPending {
		t.Errorf("a timed-out approve changed the record: %+v", r)
	}
	if n, err := e.svc.Pending(ctx, "acme"); err != nil || n != 1 {
		t.Errorf("pending = %d, %v; want 1", n, err)
	}
}

// TestPendingCountersShrink: the per-tenant counters behind MaxPending do
// not grow with the number of tenants ever seen: a counter idle for longer
// than a listing stays fresh is removed, and the cap still holds after.
func TestPendingCountersShrink(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *Config) {
		c.MaxPending = 2
		c.DefaultTimeout = time.Hour
	})
	ctx := t.Context()
	const tenants = 40
	for i := range tenants {
		tenant := fmt.Sprint("t", i)
		e.request(tenant, req("a"))
		if _, err := e.svc.Approve(ctx, tenant, DecisionInput{ID: "a", DecidedBy: "op"}); err != nil {
			t.Fatal(err)
		}
	}
	if n := e.svc.pending.size(); n != tenants {
		t.Fatalf("%d counters after %d tenants, want %d", n, tenants, tenants)
	}
	// Counters idle for pendingRefresh go at the next sweep, which the
	// next request of any tenant runs.
	time.Sleep(pendingRefresh + 50*time.Millisecond)
	e.request("late", req("l"))
	if n := e.svc.pending.size(); n != 1 {
		t.Fatalf("%d counters after the sweep, want 1 (the late tenant's)", n)
	}
	// The cap still holds for a tenant whose counter was removed.
	e2 := "t0"
	e.request(e2, req("b"))
	e.request(e2, req("c"))
	if _, err := e.svc.Request(ctx, e2, req("d")); !errors.Is(err, ErrTooManyPending) {
		t.Fatalf("3rd pending request of %s: %v, want ErrTooManyPending", e2, err)
	}
}

// TestRequestZeroTimeoutIsDefault: a timeout left out or given as "0s" is
// the default, as README documents; any other value out of range is
// refused.
func TestRequestZeroTimeoutIsDefault(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *Config) { c.DefaultTimeout = 7 * time.Minute })
	for i, body := range []string{
		`{"id":"z0","session_id":"s","requested_by":"u"}`,
		`{"id":"z1","session_id":"s","requested_by":"u","timeout":"0s"}`,
	} {
		in, err := DecodeRequest([]byte(body))
		if err != nil {
			t.Fatal(err)
		}
		r, err := e.svc.Request(t.Context(), "acme", in)
		if err != nil || time.Duration(r.Timeout) != 7*time.Minute {
			t.Errorf("body %d: timeout %s, %v; want the default 7m", i, time.Duration(r.Timeout), err)
		}
	}
	in, err := DecodeRequest([]byte(`{"id":"z2","session_id":"s","requested_by":"u","timeout":"1ms"}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Request(t.Context(), "acme", in); !errors.Is(err, ErrInvalidRequest) {
		t.Errorf("timeout 1ms: %v, want ErrInvalidRequest", err)
	}
}
