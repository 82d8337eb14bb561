package kvapprovals

// Fuzz targets for the request decoders of the request/reply API (next to
// service_test.go's FuzzDecodeRequest, which checks less). Their
// seeds run in every `go test`; to fuzz one for ten minutes:
//
//	go test -run '^$' -fuzz '^FuzzRequestBody$' -fuzztime 10m ./pkg/kvapprovals/
//
// test/e2e/fuzz.sh runs every target of the repository in turn.

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

// requestSeeds are request bodies as clients send them, and a few that
// must be refused.
var requestSeeds = []string{
	`{"session_id":"s1","requested_by":"alice"}`,
	`{"id":"deploy-42","session_id":"s1","requested_by":"alice","operator_id":"op","details":{"change":"rm -rf /tmp/x","n":[1,2,{"a":null}]},"timeout":"90s"}`,
	`{"id":"a.b","session_id":"s","requested_by":"a"}`,
	`{"id":"*","session_id":"s","requested_by":"a","timeout":"1h30m"}`,
	`{"session_id":"s","requested_by":"a","details":null,"timeout":"-5s"}`,
	`{"session_id":"s","requested_by":"a","details":[1],"timeout":5}`,
	`{"session_id":"s","requested_by":"a","bogus":true}`,
	`{"session_id":"s","requested_by":"a"}{}`,
	"{\"session_id\":\"\\u00e9\\ud800\",\"requested_by\":\"a\"}",
	`  {"timeout":"1.5s","session_id":"x","requested_by":"y"}  `,
	`null`, `[]`, `{`, ``, `"x"`,
}

// checkDecodeError asserts what every decoder error must be: a
// *FieldError naming a field, matching ErrInvalidRequest, a 400 reply.
func checkDecodeError(t *testing.T, err error) {
	t.Helper()
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field == "" {
		t.Fatalf("error %v (%T) is not a *FieldError naming a field", err, err)
	}
	if !errors.Is(err, ErrInvalidRequest) {
		t.Fatalf("error %v does not match ErrInvalidRequest", err)
	}
	if ae := ToAPIError(err); ae.Code != 400 || ae.Status != APIInvalidRequest || ae.Field != fe.Field {
		t.Fatalf("error %v becomes reply %+v, want 400 invalid_request naming %q", err, ae, fe.Field)
	}
}

// checkRoundTrip asserts that what a strict decoder accepted is JSON and
// encodes to a document the decoder accepts again, unchanged.
func checkRoundTrip[T any](t *testing.T, data []byte, v T, decode func([]byte) (T, error)) {
	t.Helper()
	if !json.Valid(data) {
		t.Fatalf("accepted a document that is not JSON: %q", data)
	}
	b1, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("marshal %+v: %v", v, err)
	}
	if len(b1) > MaxInputBytes {
		return
	}
	v2, err := decode(b1)
	if err != nil {
		t.Fatalf("decode of own encoding %s: %v", b1, err)
	}
	b2, err := json.Marshal(v2)
	if err != nil || !bytes.Equal(b1, b2) {
		t.Fatalf("round trip changed the input: %s -> %s (%v)", b1, b2, err)
	}
}

// subjectSafe reports whether s can be a NATS subject token.
func subjectSafe(s string) bool {
	return s != "" && !strings.ContainsAny(s, ".*> \t\r\n\x00")
}

func FuzzRequestBody(f *testing.F) {
	for _, s := range requestSeeds {
		f.Add([]byte(s))
	}
	svc := &Service{cfg: DefaultConfig()}
	f.Fuzz(func(t *testing.T, data []byte) {
		in, err := DecodeRequest(data)
		if err != nil {
			checkDecodeError(t, err)
			return
		}
		checkRoundTrip(t, data, in, DecodeRequest)
		// The values the service checks before it writes anything.
		timeout, err := svc.validateRequest("acme", &in)
		if err != nil {
			checkDecodeError(t, err)
			return
		}
		if in.ID != "" && !subjectSafe(in.ID) {
			t.Fatalf("id %q accepted: it would change the record's subject", in.ID)
		}
		if timeout < svc.cfg.MinTimeout || timeout > svc.cfg.MaxTimeout {
			t.Fatalf("timeout %s accepted outside [%s, %s]", timeout, svc.cfg.MinTimeout, svc.cfg.MaxTimeout)
		}
		if in.Details != nil {
			var m map[string]any
			if len(in.Details) > svc.cfg.MaxDetailsBytes || json.Unmarshal(in.Details, &m) != nil || m == nil {
				t.Fatalf("details %.100q accepted: want a JSON object of at most %d bytes", in.Details, svc.cfg.MaxDetailsBytes)
			}
		}
		rec := Record{ID: "x", Tenant: "acme", SessionID: in.SessionID, RequestedBy: in.RequestedBy, OperatorID: in.OperatorID,
			Details: in.Details, Status: StatusPending, Timeout: Duration(timeout), RequestedAt: time.Unix(0, 0).UTC()}
		got, err := decodeRecord(encodeRecord(&rec), 1)
		if err != nil || !got.sameRequest(&in, timeout) {
			t.Fatalf("stored record does not read back as the same request: %+v, %v", got, err)
		}
	})
}

func FuzzDecisionBody(f *testing.F) {
	for _, s := range []string{
		`{"id":"a1","decided_by":"bob"}`, `{"id":"a1","decided_by":"bob","reason":"looks good"}`,
		`{"id":"a.b","decided_by":"bob"}`, `{"id":">","decided_by":7}`, `{"id":"a1","approved_by":"bob"}`,
		`{"id":["a"]}`, `{}`, `null`, ``, `{"id":"a1","decided_by":"b"} x`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		in, err := DecodeDecision(data)
		if err != nil {
			checkDecodeError(t, err)
			return
		}
		checkRoundTrip(t, data, in, DecodeDecision)
		if checkName("id", in.ID) == nil && !subjectSafe(in.ID) {
			t.Fatalf("id %q passes the check", in.ID)
		}
	})
}

func FuzzCancelBody(f *testing.F) {
	for _, s := range []string{
		`{"id":"a1","cancelled_by":"alice"}`, `{"id":"a1","cancelled_by":"alice","reason":"not needed"}`,
		`{"id":"a1","decided_by":"alice"}`, `{"id":1}`, `{"id":"a1","cancelled_by":null}`, `[`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		in, err := DecodeCancel(data)
		if err != nil {
			checkDecodeError(t, err)
			return
		}
		checkRoundTrip(t, data, in, DecodeCancel)
	})
}

func FuzzGetBody(f *testing.F) {
	for _, s := range []string{`{"id":"a1"}`, `{"id":"a.*"}`, `{"id":1}`, `{}`, `{"ID":"a1"}`, `{"id":"a1","x":1}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		in, err := DecodeGet(data)
		if err != nil {
			checkDecodeError(t, err)
			return
		}
		checkRoundTrip(t, data, in, DecodeGet)
		if checkName("id", in.ID) == nil && !subjectSafe(in.ID) {
			t.Fatalf("id %q passes the check", in.ID)
		}
	})
}

func FuzzListBody(f *testing.F) {
	for _, s := range []string{
		`{}`, `{"status":"pending","limit":50}`, `{"status":"bogus"}`, `{"limit":-1}`, `{"limit":1e3}`,
		`{"limit":"ten"}`, `{"cursor":"` + encodeCursor("a1") + `"}`, `{"cursor":"` + encodeCursor("a.>") + `"}`, `{"cursor":"!!"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		in, err := DecodeList(data)
		if err != nil {
			checkDecodeError(t, err)
			return
		}
		checkRoundTrip(t, data, in, DecodeList)
		after, err := decodeCursor(in.Cursor)
		if err != nil {
			checkDecodeError(t, err)
			return
		}
		if after == "" {
			return
		}
		if !subjectSafe(after) {
			t.Fatalf("cursor %q decodes to %q, not an id", in.Cursor, after)
		}
		if again, err := decodeCursor(encodeCursor(after)); err != nil || again != after {
			t.Fatalf("cursor of %q decodes to %q, %v", after, again, err)
		}
	})
}

// FuzzGenericBody fuzzes the generic decoder guardian uses for bodies without a
// typed decoder: policy.get's empty object and audit.report's fields.
func FuzzGenericBody(f *testing.F) {
	for _, s := range []string{``, `  `, `{}`, `{"x":1}`, `[]`, `null`, "\n{}\n", `{"status":"pending"}`, `{"limit":5,"cursor":""}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if _, err := Decode[struct{}](data); err != nil {
			checkDecodeError(t, err)
		} else if len(bytes.TrimSpace(data)) != 0 && !json.Valid(data) {
			t.Fatalf("accepted %q", data)
		}
		in, err := Decode[ListInput](data)
		if err != nil {
			checkDecodeError(t, err)
			return
		}
		if len(bytes.TrimSpace(data)) == 0 {
			if in != (ListInput{}) {
				t.Fatalf("empty body decoded to %+v", in)
			}
			return
		}
		checkRoundTrip(t, data, in, Decode[ListInput])
	})
}
