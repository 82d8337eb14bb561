package console

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/jsguardian/guardian/pkg/auditstream"
	"github.com/jsguardian/guardian/pkg/jsguard"
	"github.com/jsguardian/guardian/pkg/kvapprovals"
)

var funcs = template.FuncMap{
	"rfc3339": func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
	"short":   func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05Z") },
	"shortp": func(t *time.Time) string {
		if t == nil {
			return ""
		}
		return t.UTC().Format("2006-01-02 15:04:05Z")
	},
	"who": func(by string, id *kvapprovals.Identity) string {
		if id == nil || id.Source == kvapprovals.SourceAsserted {
			return by
		}
		return id.String()
	},
	"json": func(b json.RawMessage) string {
		var out bytes.Buffer
		if len(b) == 0 || json.Indent(&out, b, "", "  ") != nil {
			return ""
		}
		return out.String()
	},
	"dur":      func(d kvapprovals.Duration) string { return time.Duration(d).String() },
	"add":      func(a, b int) int { return a + b },
	"list":     func(s ...string) []string { return s },
	"page":     func(p page, r kvapprovals.Record) page { p.Data = &r; return p },
	"required": func(r kvapprovals.Record) int { return max(1, r.RequiredApprovals) },
}

// page is what every page template gets.
type page struct {
	Title    string
	Nav      string
	Mode     Mode
	Actor    string // who the session acts as, "" when nobody yet
	CSRF     string
	Grace    time.Duration
	Error    string
	Data     any
	Now      time.Time
	LocalURL bool
}

func (c *Console) page(s *session, nav, title string, data any) page {
	id, _ := c.identity(s)
	return page{Title: title, Nav: nav, Mode: c.cfg.Mode, Actor: id.User, CSRF: s.CSRF,
		Grace: c.cfg.Approvals.Config().GracePeriod, Data: data, Now: time.Now().UTC()}
}

func (c *Console) render(w http.ResponseWriter, name string, p page) {
	c.renderStatus(w, http.StatusOK, name, p)
}

func (c *Console) renderStatus(w http.ResponseWriter, code int, name string, p page) {
	var buf bytes.Buffer
	if err := c.tmpl.ExecuteTemplate(&buf, name, p); err != nil {
		c.cfg.Log.Error("console: render", "template", name, "err", err)
		http.Error(w, "render failed", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = buf.WriteTo(w)
}

// visible reports whether the session may see (and act on) tenant's
// approvals: a tenant without approver rules is everyone's, one with rules
// only its approvers'. ModeLocal sees everything.
type visibility struct {
	c     *Console
	id    kvapprovals.Identity
	mu    sync.Mutex
	cache map[string]bool
}

func (c *Console) visibility(s *session) *visibility {
	id, _ := c.identity(s)
	return &visibility{c: c, id: id, cache: map[string]bool{}}
}

func (v *visibility) sees(ctx context.Context, tenant string) bool {
	if v.c.cfg.Mode == ModeLocal || tenant == "" { // "": guardian's own timeouts, no tenant's
		return true
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if ok, hit := v.cache[tenant]; hit {
		return ok
	}
	rules, err := v.c.cfg.Approvals.TenantRules(ctx, tenant)
	ok := err == nil && rules.Eligible(&v.id)
	v.cache[tenant] = ok
	return ok
}

// ---- pending --------------------------------------------------------------

func (c *Console) pendingPage(w http.ResponseWriter, r *http.Request, s *session) {
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	vis := c.visibility(s)
	res, err := c.cfg.Approvals.Search(ctx, kvapprovals.SearchInput{Statuses: []kvapprovals.Status{kvapprovals.StatusPending},
		Match: func(r *kvapprovals.Record) bool { return vis.sees(ctx, r.Tenant) }, ByExpiry: true, Limit: kvapprovals.MaxListLimit})
	p := c.page(s, "pending", "Pending approvals", nil)
	if err != nil {
		p.Error = err.Error()
	}
	if res.NextCursor != "" {
		p.Error = fmt.Sprintf("showing the %d approvals that expire soonest; more are pending", len(res.Items))
	}
	p.Data = res.Items
	c.render(w, "pending.html", p)
}

// ---- history --------------------------------------------------------------

type historyData struct {
	Items                                            []kvapprovals.Record
	Tenant, Status, Requester, Decider, Since, Until string
	Next                                             string
}

func (c *Console) historyPage(w http.ResponseWriter, r *http.Request, s *session) {
	q := r.URL.Query()
	d := historyData{Tenant: q.Get("tenant"), Status: q.Get("status"), Requester: q.Get("requester"), Decider: q.Get("decider"), Since: q.Get("since"), Until: q.Get("until")}
	in := kvapprovals.SearchInput{Tenant: d.Tenant, Requester: d.Requester, Decider: d.Decider, Limit: 50, Cursor: q.Get("cursor"),
		Statuses: []kvapprovals.Status{kvapprovals.StatusApproved, kvapprovals.StatusDenied, kvapprovals.StatusCancelled, kvapprovals.StatusExpired}}
	if d.Status != "" {
		in.Statuses = []kvapprovals.Status{kvapprovals.Status(d.Status)}
	}
	p := c.page(s, "history", "History", nil)
	if d.Since != "" {
		dur, err := time.ParseDuration(d.Since)
		if err != nil || dur <= 0 {
			p.Error = fmt.Sprintf("since %q: give a duration such as 24h", d.Since)
		} else {
			in.Since = time.Now().Add(-dur)
		}
	}
	if d.Until != "" {
		until, err := time.Parse(time.RFC3339, d.Until)
		if err != nil {
			p.Error = fmt.Sprintf("requested before %q: give an RFC 3339 time such as 2026-12-01T00:00:00Z", d.Until)
		} else {
			in.Until = until
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	if p.Error == "" {
		vis := c.visibility(s)
		in.Match = func(r *kvapprovals.Record) bool { return vis.sees(ctx, r.Tenant) }
		res, err := c.cfg.Approvals.Search(ctx, in)
		if err != nil {
			p.Error = err.Error()
		}
		d.Items = res.Items
		if res.NextCursor != "" {
			nq := r.URL.Query()
			nq.Set("cursor", res.NextCursor)
			d.Next = "/ui/history?" + nq.Encode()
		}
	}
	p.Data = d
	c.render(w, "history.html", p)
}

// ---- detail ---------------------------------------------------------------

type detailData struct {
	Record    kvapprovals.Record
	Revisions []kvapprovals.Record
}

func (c *Console) detailPage(w http.ResponseWriter, r *http.Request, s *session) {
	tenant, id := r.URL.Query().Get("tenant"), r.URL.Query().Get("id")
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	p := c.page(s, "history", "Approval "+tenant+"/"+id, nil)
	if !c.visibility(s).sees(ctx, tenant) {
		p.Error = "not found"
		c.renderStatus(w, http.StatusNotFound, "detail.html", p)
		return
	}
	revs, err := c.cfg.Approvals.Revisions(ctx, tenant, id)
	if err != nil {
		p.Error = err.Error()
		code := http.StatusInternalServerError
		if errors.Is(err, kvapprovals.ErrNotFound) || errors.Is(err, kvapprovals.ErrInvalidRequest) {
			code = http.StatusNotFound
		}
		c.renderStatus(w, code, "detail.html", p)
		return
	}
	p.Data = detailData{Record: revs[len(revs)-1], Revisions: revs}
	c.render(w, "detail.html", p)
}

// ---- audit ----------------------------------------------------------------

type auditData struct {
	Tenant, Code, Window string
	Events               []auditstream.Entry
	Counts               []codeCount
	Total                int
	Partial              string // why the counts cover less than the window
	Chart                template.HTML
	Seals                string // "verified", "problems: …", "no seals configured", or an error
	SealsOK              bool
}

type codeCount struct {
	Code  string
	Count int
}

func (c *Console) auditPage(w http.ResponseWriter, r *http.Request, s *session) {
	q := r.URL.Query()
	d := auditData{Tenant: q.Get("tenant"), Code: q.Get("code"), Window: q.Get("window")}
	if d.Window == "" {
		d.Window = "1h"
	}
	p := c.page(s, "audit", "Audit trail", nil)
	window, err := time.ParseDuration(d.Window)
	if err != nil || window <= 0 || window > 30*24*time.Hour {
		p.Error = fmt.Sprintf("window %q: give a duration such as 1h (at most 720h)", d.Window)
		p.Data = d
		c.render(w, "audit.html", p)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	vis := c.visibility(s)
	if evs, err := c.latestAudit(ctx, vis, d.Tenant, d.Code, 50); err != nil {
		p.Error = err.Error()
	} else {
		d.Events = evs
	}
	// Counting is T5 work: when the budget runs out, the counts so far.
	counts, err := auditstream.Stats(ctx, c.cfg.JS, c.cfg.Audit, auditstream.StatsOptions{Window: window, Tenant: d.Tenant, Code: d.Code, Guard: c.cfg.Guard})
	if err != nil && p.Error == "" {
		p.Error = err.Error()
	}
	if counts.Aborted {
		d.Partial = fmt.Sprintf("counted up to %s only: the T5 budget (%s) ran out", counts.To.Format(time.RFC3339), counts.Cause.Budget)
	}
	byCode := map[string]int{}
	for _, b := range counts.Buckets {
		if vis.sees(ctx, b.Tenant) {
			byCode[b.Code] += b.Count
			d.Total += b.Count
		}
	}
	for code, n := range byCode {
		d.Counts = append(d.Counts, codeCount{code, n})
	}
	slices.SortFunc(d.Counts, func(a, b codeCount) int {
		if a.Count != b.Count {
			return b.Count - a.Count
		}
		return strings.Compare(a.Code, b.Code)
	})
	d.Chart = barChart(d.Counts)
	d.Seals, d.SealsOK = c.sealState(ctx)
	p.Data = d
	c.render(w, "audit.html", p)
}

// latestAudit returns up to n of the newest timeout events matching the
// filters whose tenant the session may see, newest first. It reads from a
// little before the end of the stream, further back while it finds too
// few.
func (c *Console) latestAudit(ctx context.Context, vis *visibility, tenant, code string, n int) ([]auditstream.Entry, error) {
	var out []auditstream.Entry
	err := c.cfg.Guard.Do(ctx, jsguard.ReplayValidation, "console audit read "+c.cfg.Audit.Stream, func(ctx context.Context) error {
		var err error
		out, err = c.readLatest(ctx, vis, tenant, code, n)
		return err
	})
	return out, err
}

func (c *Console) readLatest(ctx context.Context, vis *visibility, tenant, code string, n int) ([]auditstream.Entry, error) {
	st, err := c.cfg.JS.Stream(ctx, c.cfg.Audit.Stream)
	if err != nil {
		return nil, fmt.Errorf("audit stream: %w", err)
	}
	state := st.CachedInfo().State
	if state.Msgs == 0 {
		return nil, nil
	}
	tok, ctok := "*", "*"
	if tenant != "" {
		tok = auditstream.TenantToken(tenant)
	}
	if code != "" {
		ctok = code
	}
	filter := c.cfg.Audit.SubjectPrefix + "." + tok + "." + ctok
	var out []auditstream.Entry
	for back := uint64(4 * n); ; back *= 8 {
		start := state.FirstSeq
		if state.LastSeq > back && state.LastSeq-back > start {
			start = state.LastSeq - back
		}
		out = out[:0]
		err := readFrom(ctx, st, filter, start, func(m jetstream.Msg) {
			var ev jsguard.Event
			if json.Unmarshal(m.Data(), &ev) != nil || !strings.HasPrefix(ev.Code, "TIMEOUT_") || !vis.sees(ctx, ev.TenantID) {
				return
			}
			e := auditstream.Entry{Subject: m.Subject(), Event: ev}
			if md, err := m.Metadata(); err == nil {
				e.Seq, e.Time = md.Sequence.Stream, md.Timestamp
			}
			out = append(out, e)
		})
		if err != nil {
			return nil, err
		}
		if len(out) >= n || start == state.FirstSeq {
			break
		}
	}
	slices.Reverse(out)
	if len(out) > n {
		out = out[:n]
	}
	return out, nil
}

// readFrom hands fn every message of st matching filter from sequence
// start to the end as it was when the read began.
func readFrom(ctx context.Context, st jetstream.Stream, filter string, start uint64, fn func(jetstream.Msg)) error {
	cons, err := st.CreateConsumer(ctx, jetstream.ConsumerConfig{
		FilterSubject: filter, DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: start,
		AckPolicy: jetstream.AckNonePolicy, MemoryStorage: true, Replicas: 1, InactiveThreshold: 30 * time.Second,
	})
	if err != nil {
		return fmt.Errorf("read %s: %w", filter, err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = st.DeleteConsumer(dctx, cons.CachedInfo().Name)
	}()
	want := cons.CachedInfo().NumPending
	for got := uint64(0); got < want; {
		batch, err := cons.FetchNoWait(int(min(want-got, 500)))
		if err != nil {
			return fmt.Errorf("read %s: %w", filter, err)
		}
		k := 0
		for m := range batch.Messages() {
			fn(m)
			k++
		}
		if k == 0 {
			return nil // removed meanwhile
		}
		got += uint64(k)
	}
	return nil
}

// sealState verifies the audit stream's seal chain, at most every 30 s.
func (c *Console) sealState(ctx context.Context) (string, bool) {
	if c.cfg.SealPublicKey == "" {
		return "no seals: GUARDIAN_AUDIT_SEAL_SEED is not set", false
	}
	v := &c.verify
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.report == nil && v.err == nil || time.Since(v.at) > 30*time.Second {
		// Verification is T5 work: when the budget runs out, a report
		// of what was verified.
		rep, err := auditstream.Verify(ctx, c.cfg.JS, c.cfg.Audit, c.cfg.SealPublicKey, auditstream.WithGuard(c.cfg.Guard))
		v.at, v.report, v.err = time.Now(), &rep, err
	}
	switch {
	case v.err != nil:
		return "verification failed: " + v.err.Error(), false
	case v.report.Aborted && len(v.report.Problems) == 0:
		return fmt.Sprintf("partly verified at %s: %d events up to seq %d, no problem in them; the T5 budget (%s) ran out before the end (run 'guardian audit verify' for all of it)",
			v.at.UTC().Format(time.RFC3339), v.report.Events, v.report.LastSeq, v.report.Cause.Budget), false
	case !v.report.OK():
		return fmt.Sprintf("%d problem(s): %v", len(v.report.Problems)+v.report.Omitted, v.report.Err()), false
	}
	return fmt.Sprintf("verified at %s: %d events in %d sealed ranges, head %s, %d events not sealed yet",
		v.at.UTC().Format(time.RFC3339), v.report.Events, v.report.RangesVerified, v.report.Head, v.report.Unsealed.Events), true
}

// barChart draws counts as horizontal bars in inline SVG.
func barChart(counts []codeCount) template.HTML {
	if len(counts) == 0 {
		return ""
	}
	maxN := counts[0].Count
	const rowH, labelW, barW = 22, 260, 300
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="chart" role="img" aria-label="audit events per code" viewBox="0 0 %d %d" width="100%%">`, labelW+barW+60, rowH*len(counts))
	for i, cc := range counts {
		w := max(1, cc.Count*barW/max(1, maxN))
		y := i * rowH
		fmt.Fprintf(&b, `<text x="0" y="%d" class="label">%s</text><rect x="%d" y="%d" width="%d" height="%d" class="bar"/><text x="%d" y="%d" class="count">%d</text>`,
			y+15, template.HTMLEscapeString(cc.Code), labelW, y+3, w, rowH-6, labelW+w+6, y+15, cc.Count)
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

// ---- decisions ------------------------------------------------------------

// decide applies approve, deny or extend with the session's identity and
// answers JSON: the record's new row, or the API's error and its status.
func (c *Console) decide(w http.ResponseWriter, r *http.Request, s *session) {
	// The page's script sends the token as a header and reads JSON; a
	// plain form post (no script) gets the pending page back.
	script := r.Header.Get("X-CSRF-Token") != ""
	httpError := func(w http.ResponseWriter, code int, msg string) {
		if script {
			httpError(w, code, msg)
			return
		}
		p := c.page(s, "pending", "Pending approvals", []kvapprovals.Record{})
		p.Error = msg
		c.renderStatus(w, code, "pending.html", p)
	}
	id, ok := c.identity(s)
	if !ok {
		httpError(w, http.StatusForbidden, "say who you are first (your name, at the top)")
		return
	}
	tenant, approval, action, reason := r.PostFormValue("tenant"), r.PostFormValue("id"), r.PostFormValue("action"), strings.TrimSpace(r.PostFormValue("reason"))
	if reason == "" {
		httpError(w, http.StatusBadRequest, "a reason is required")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 15*time.Second)
	defer cancel()
	if !c.visibility(s).sees(ctx, tenant) {
		httpError(w, http.StatusNotFound, "no such approval")
		return
	}
	ctx = kvapprovals.WithIdentity(ctx, id)
	var rec kvapprovals.Record
	var err error
	switch action {
	case "approve":
		rec, err = c.cfg.Approvals.Approve(ctx, tenant, kvapprovals.DecisionInput{ID: approval, Reason: reason})
	case "deny":
		rec, err = c.cfg.Approvals.Deny(ctx, tenant, kvapprovals.DecisionInput{ID: approval, Reason: reason})
	case "extend":
		d, perr := time.ParseDuration(r.PostFormValue("extend_by"))
		if perr != nil || d <= 0 {
			httpError(w, http.StatusBadRequest, "extend by: give a duration such as 15m")
			return
		}
		rec, err = c.cfg.Approvals.Extend(ctx, tenant, kvapprovals.ExtendInput{ID: approval, ExtendBy: kvapprovals.Duration(d), Reason: reason})
	default:
		httpError(w, http.StatusBadRequest, "choose Approve, Deny or Extend")
		return
	}
	if err != nil {
		ae := kvapprovals.ToAPIError(err)
		httpError(w, ae.Code, fmt.Sprintf("%d %s: %s", ae.Code, ae.Status, ae.Message))
		return
	}
	c.cfg.Log.Info("console decision", "action", action, "approval", rec.Key(), "by", id.String(), "status", rec.Status)
	if !script {
		http.Redirect(w, r, "/ui/pending", http.StatusSeeOther)
		return
	}
	row, _ := c.row(s, &rec)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"key": rec.Key(), "status": rec.Status, "row": row})
}

// row renders one pending approval's card.
func (c *Console) row(s *session, rec *kvapprovals.Record) (string, error) {
	var b bytes.Buffer
	err := c.tmpl.ExecuteTemplate(&b, "row", c.page(s, "pending", "", rec))
	return b.String(), err
}

// ---- live events ----------------------------------------------------------

// hub fans the lifecycle events out to the open event streams.
type hub struct {
	mu      sync.Mutex
	clients map[chan kvapprovals.Event]struct{}
	closed  bool
}

func newHub() *hub { return &hub{clients: map[chan kvapprovals.Event]struct{}{}} }

func (h *hub) add() chan kvapprovals.Event {
	h.mu.Lock()
	defer h.mu.Unlock()
	ch := make(chan kvapprovals.Event, 256)
	if h.closed {
		close(ch)
		return ch
	}
	h.clients[ch] = struct{}{}
	return ch
}

func (h *hub) remove(ch chan kvapprovals.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.clients[ch]; ok {
		delete(h.clients, ch)
		close(ch)
	}
}

func (h *hub) publish(ev kvapprovals.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.clients {
		select {
		case ch <- ev:
		default: // a stream that does not keep up is dropped; its page reconnects and reloads
			delete(h.clients, ch)
			close(ch)
		}
	}
}

func (h *hub) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	for ch := range h.clients {
		close(ch)
	}
	clear(h.clients)
}

func (c *Console) onEvent(m *nats.Msg) {
	var ev kvapprovals.Event
	if json.Unmarshal(m.Data, &ev) != nil || ev.Kind == kvapprovals.KindNotificationFailed {
		return
	}
	c.hub.publish(ev)
}

// events streams the lifecycle events the session may see as server-sent
// events named "approval": {"key", "kind", "status", "row", "by"}, where
// row is the pending card (empty once the approval left pending).
func (c *Console) events(w http.ResponseWriter, r *http.Request, s *session) {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	ch := c.hub.add()
	defer c.hub.remove(ch)
	vis := c.visibility(s)
	rc := http.NewResponseController(w)
	write := func(format string, args ...any) bool {
		// A browser that stops reading does not hold this stream forever.
		_ = rc.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if _, err := fmt.Fprintf(w, format, args...); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	if !write("retry: 2000\n: connected\n\n") {
		return
	}
	ping := time.NewTicker(20 * time.Second)
	defer ping.Stop()
	// The stream ends with the session: the page reconnects, and a
	// session that ran out gets no more events.
	expiry := time.NewTimer(time.Until(time.Unix(s.Expires, 0)))
	defer expiry.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-expiry.C:
			return
		case <-ping.C:
			if !write(": ping\n\n") {
				return
			}
		case ev, ok := <-ch:
			if !ok {
				return
			}
			if !vis.sees(r.Context(), ev.Tenant) {
				continue
			}
			rec := ev.Record
			out := map[string]any{"key": rec.Key(), "kind": ev.Kind, "status": rec.Status, "by": rec.DecidedBy, "reason": rec.Reason}
			if rec.Status == kvapprovals.StatusPending {
				out["row"], _ = c.row(s, &rec)
			}
			b, _ := json.Marshal(out)
			if !write("event: approval\nid: %s\ndata: %s\n\n", strconv.FormatUint(ev.Revision, 10), b) {
				return
			}
		}
	}
}
