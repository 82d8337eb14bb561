package jsguard

import (
	"context"
	"errors"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
)

// Connect dials NATS under NATSConnect, with nats.Timeout set to the time
// left until the call's deadline unless opts set their own. nats.Connect
// takes no context, so a dial that outlives the deadline is abandoned; if
// it succeeds later, that connection is closed. It returns nats.Connect's
// error (e.g. nats.ErrNoServers), ctx.Err() when ctx is cancelled, or a
// *TimeoutError with code TIMEOUT_NATS_CONNECT. The operation in the audit
// event names the URL with any password or token replaced by ***.
func (g *Guard) Connect(ctx context.Context, url string, opts ...nats.Option) (*nats.Conn, error) {
	return doValue(ctx, g, NATSConnect, "nats connect "+redactURL(url), func(ctx context.Context) (*nats.Conn, error) {
		o := make([]nats.Option, 0, len(opts)+1)
		if dl, ok := ctx.Deadline(); ok {
			o = append(o, nats.Timeout(max(time.Until(dl), time.Millisecond)))
		}
		return nats.Connect(url, append(o, opts...)...)
	}, (*nats.Conn).Close, nil)
}

// redactURL returns the server URL, or comma-separated list of URLs, with
// passwords and tokens replaced by ***, so it can be logged and audited.
func redactURL(list string) string {
	parts := strings.Split(list, ",")
	for i, p := range parts {
		parts[i] = redactOne(strings.TrimSpace(p))
	}
	return strings.Join(parts, ",")
}

func redactOne(s string) string {
	if !strings.Contains(s, "@") {
		return s
	}
	raw, prefix := s, ""
	if !strings.Contains(s, "://") {
		// nats.go accepts host:port without a scheme; parse it as nats://.
		raw, prefix = "nats://"+s, "nats://"
	}
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		// Not a URL we understand: hide everything before the last @.
		at := strings.LastIndex(s, "@")
		if i := strings.Index(s, "://"); i >= 0 && i+3 <= at {
			return s[:i+3] + "***" + s[at:]
		}
		return "***" + s[at:]
	}
	user := "***" // a lone user part is a token
	if _, ok := u.User.Password(); ok {
		user = url.User(u.User.Username()).String() + ":***"
	}
	u.User = nil
	out := u.String()
	if i := strings.Index(out, "://"); i >= 0 {
		out = out[:i+3] + user + "@" + out[i+3:]
	}
	return strings.TrimPrefix(out, prefix)
}

// Publish publishes to a JetStream stream under NATSPublish and waits for the
// ack. It returns the jetstream error (e.g. jetstream.ErrNoStreamResponse
// when no stream takes the subject), ctx.Err(), or a *TimeoutError with code
// TIMEOUT_NATS_PUBLISH.
func (g *Guard) Publish(ctx context.Context, js jetstream.JetStream, subject string, data []byte, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	return DoValue(ctx, g, NATSPublish, "publish "+subject, func(ctx context.Context) (*jetstream.PubAck, error) {
		return js.Publish(ctx, subject, data, opts...)
	})
}

// PublishMsg is Publish for a message with headers; it returns the errors
// Publish returns.
func (g *Guard) PublishMsg(ctx context.Context, js jetstream.JetStream, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	return DoValue(ctx, g, NATSPublish, "publish "+msg.Subject, func(ctx context.Context) (*jetstream.PubAck, error) {
		return js.PublishMsg(ctx, msg, opts...)
	})
}

// Subscribe subscribes to subject under NATSSubscribe and flushes, so the
// server has the interest when Subscribe returns. On a timeout or flush error
// the subscription is removed. It returns the nats error, ctx.Err(), or a
// *TimeoutError with code TIMEOUT_NATS_SUBSCRIBE.
func (g *Guard) Subscribe(ctx context.Context, nc *nats.Conn, subject string, cb nats.MsgHandler) (*nats.Subscription, error) {
	return doValue(ctx, g, NATSSubscribe, "subscribe "+subject, func(ctx context.Context) (*nats.Subscription, error) {
		sub, err := nc.Subscribe(subject, cb)
		if err != nil {
			return nil, err
		}
		for {
			err := nc.FlushWithContext(ctx)
			if err == nil {
				return sub, nil
			}
			// A connection that drops while the flush waits fails it
			// with ErrConnectionClosed although it is reconnecting; the
			// subscription is sent again on reconnect, so wait for that
			// within the same deadline.
			if !errors.Is(err, nats.ErrConnectionClosed) || nc.IsClosed() || ctx.Err() != nil {
				_ = sub.Unsubscribe()
				return nil, err
			}
		}
	}, unsubscribe, nil)
}

func unsubscribe(s *nats.Subscription) { _ = s.Unsubscribe() }

// Request sends a core NATS request under APIRequest and returns the reply.
// The request carries the time the call has left in its TimeoutHeader
// (msg itself is not changed), so that a responder that honours it (see
// WithRequestTimeout) never works longer than the caller waits. It returns
// nats.ErrNoResponders when nobody listens, another nats error, ctx.Err(),
// or a *TimeoutError with code TIMEOUT_API_REQUEST.
func (g *Guard) Request(ctx context.Context, nc *nats.Conn, msg *nats.Msg) (*nats.Msg, error) {
	return DoValue(ctx, g, APIRequest, "request "+msg.Subject, func(ctx context.Context) (*nats.Msg, error) {
		out := *msg
		out.Header = make(nats.Header, len(msg.Header)+1)
		for k, v := range msg.Header {
			out.Header[k] = v
		}
		if d, ok := ctx.Deadline(); ok {
			out.Header.Set(TimeoutHeader, strconv.FormatInt(max(1, time.Until(d).Milliseconds()), 10))
		}
		return nc.RequestMsgWithContext(ctx, &out)
	})
}

// TimeoutHeader is the NATS header in which a request carries how long its
// caller still waits for the reply: whole milliseconds, a positive decimal
// integer, measured when the request was sent (relative, so that the
// clocks of caller and responder need not agree). Guard.Request sets it; a
// client in another language sets it to the time left on its own
// deadline. guardian's API, and any handler that uses WithRequestTimeout,
// stop working on a request once that time has passed.
const TimeoutHeader = "Guardian-Timeout-Ms"

// RequestTimeout returns the time a request's caller still waits, from
// its TimeoutHeader, and whether the header holds a valid value (a
// positive integer of milliseconds, at most MaxBudget).
func RequestTimeout(h nats.Header) (time.Duration, bool) {
	v := h.Get(TimeoutHeader)
	if v == "" {
		return 0, false
	}
	ms, err := strconv.ParseInt(v, 10, 64)
	if err != nil || ms <= 0 || ms > MaxBudget.Milliseconds() {
		return 0, false
	}
	return time.Duration(ms) * time.Millisecond, true
}

// WithRequestTimeout returns ctx bounded by the time a request's caller
// still waits (its TimeoutHeader), counted from now, and its cancel
// function; without a valid header, ctx with a no-op cancel. Guarded calls
// under the returned context are clamped to it, and the one its deadline
// cuts short is audited with budget_source "parent".
func WithRequestTimeout(ctx context.Context, h nats.Header) (context.Context, context.CancelFunc) {
	d, ok := RequestTimeout(h)
	if !ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, d)
}

// MicroHandler adapts h to a nats.go micro handler whose context is
// bounded by the caller's TimeoutHeader (see WithRequestTimeout), so that
// a micro service honours its callers' deadlines: h's guarded calls never
// outlive the caller. h must respond to req.
func MicroHandler(h func(ctx context.Context, req micro.Request)) micro.Handler {
	return micro.HandlerFunc(func(req micro.Request) {
		ctx, cancel := WithRequestTimeout(context.Background(), nats.Header(req.Headers()))
		defer cancel()
		h(ctx, req)
	})
}

// EnsureStream creates the stream or updates it to cfg, under
// NATSStreamCreate. It returns the jetstream error (an update the server
// refuses comes back as *jetstream.APIError), ctx.Err(), or a *TimeoutError
// with code TIMEOUT_NATS_STREAM_CREATE.
func (g *Guard) EnsureStream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	return DoValue(ctx, g, NATSStreamCreate, "ensure stream "+cfg.Name, func(ctx context.Context) (jetstream.Stream, error) {
		return js.CreateOrUpdateStream(ctx, cfg)
	})
}

// EnsureConsumer creates the durable consumer or updates it to cfg, under
// NATSSubscribe. It returns the jetstream error, ctx.Err(), or a
// *TimeoutError with code TIMEOUT_NATS_SUBSCRIBE.
func (g *Guard) EnsureConsumer(ctx context.Context, js jetstream.JetStream, stream string, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	return DoValue(ctx, g, NATSSubscribe, "ensure consumer "+stream+"/"+cfg.Durable, func(ctx context.Context) (jetstream.Consumer, error) {
		return js.CreateOrUpdateConsumer(ctx, stream, cfg)
	})
}

// EnsureKV creates the bucket or updates it to cfg, under KVCreate, and
// returns a guarded handle. It returns the jetstream error, ctx.Err(), or a
// *TimeoutError with code TIMEOUT_KV_CREATE.
func (g *Guard) EnsureKV(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) (*KV, error) {
	kv, err := DoValue(ctx, g, KVCreate, "ensure kv "+cfg.Bucket, func(ctx context.Context) (jetstream.KeyValue, error) {
		return js.CreateOrUpdateKeyValue(ctx, cfg)
	})
	if err != nil {
		return nil, err
	}
	return g.KV(kv), nil
}

// KV wraps a bucket so that each operation runs under its category: Get and
// Keys under KVGet; Create, Put and Update under KVPut; Delete and Purge
// under KVDelete, so a timeout's code is TIMEOUT_KV_GET, TIMEOUT_KV_PUT or
// TIMEOUT_KV_DELETE. Every method returns ctx.Err() when ctx is cancelled. A
// KV is safe for concurrent use.
type KV struct {
	g  *Guard
	kv jetstream.KeyValue
}

// KV returns a guarded handle for kv; g may be nil for the default Guard.
func (g *Guard) KV(kv jetstream.KeyValue) *KV { return &KV{g: orDefault(g), kv: kv} }

// Bucket returns the bucket's name.
func (k *KV) Bucket() string { return k.kv.Bucket() }

// Raw returns the underlying bucket, for what KV does not wrap (Watch with a
// caller-managed context, Status).
func (k *KV) Raw() jetstream.KeyValue { return k.kv }

func (k *KV) op(verb, key string) string { return "kv " + verb + " " + k.kv.Bucket() + "/" + key }

// Get returns the key's latest entry. It returns jetstream.ErrKeyNotFound
// (also for a deleted key) or a *TimeoutError.
func (k *KV) Get(ctx context.Context, key string, opts ...CallOption) (jetstream.KeyValueEntry, error) {
	return DoValue(ctx, k.g, KVGet, k.op("get", key), func(ctx context.Context) (jetstream.KeyValueEntry, error) {
		return k.kv.Get(ctx, key)
	}, opts...)
}

// Create writes key only if it does not exist (or was deleted), optionally
// with jetstream.KeyTTL, and returns the revision. It returns
// jetstream.ErrKeyExists or a *TimeoutError.
func (k *KV) Create(ctx context.Context, key string, value []byte, opts ...jetstream.KVCreateOpt) (uint64, error) {
	return DoValue(ctx, k.g, KVPut, k.op("create", key), func(ctx context.Context) (uint64, error) {
		return k.kv.Create(ctx, key, value, opts...)
	})
}

// Put writes key unconditionally and returns the revision. It returns the
// jetstream error or a *TimeoutError.
func (k *KV) Put(ctx context.Context, key string, value []byte) (uint64, error) {
	return DoValue(ctx, k.g, KVPut, k.op("put", key), func(ctx context.Context) (uint64, error) {
		return k.kv.Put(ctx, key, value)
	})
}

// Update writes key if its latest revision is last (compare-and-set) and
// returns the new revision. It returns an error matching
// jetstream.ErrKeyRevisionMismatch when another writer won, or a
// *TimeoutError.
func (k *KV) Update(ctx context.Context, key string, value []byte, last uint64, opts ...CallOption) (uint64, error) {
	return DoValue(ctx, k.g, KVPut, k.op("update", key), func(ctx context.Context) (uint64, error) {
		return k.kv.Update(ctx, key, value, last)
	}, opts...)
}

// Delete places a delete marker on key. It returns the jetstream error or a
// *TimeoutError.
func (k *KV) Delete(ctx context.Context, key string, opts ...jetstream.KVDeleteOpt) error {
	return k.g.Do(ctx, KVDelete, k.op("delete", key), func(ctx context.Context) error {
		return k.kv.Delete(ctx, key, opts...)
	})
}

// Purge removes key's history, leaving one purge marker (give
// jetstream.PurgeTTL so the marker expires too). It returns the jetstream
// error or a *TimeoutError.
func (k *KV) Purge(ctx context.Context, key string, opts ...jetstream.KVDeleteOpt) error {
	return k.g.Do(ctx, KVDelete, k.op("purge", key), func(ctx context.Context) error {
		return k.kv.Purge(ctx, key, opts...)
	})
}

// Keys returns the keys matching the filters (all keys when none are given)
// under KVGet. It returns jetstream.ErrNoKeysFound for an empty result, or a
// *TimeoutError.
func (k *KV) Keys(ctx context.Context, filters ...string) ([]string, error) {
	pattern := jetstream.AllKeys
	if len(filters) > 0 {
		pattern = strings.Join(filters, ",")
	}
	return DoValue(ctx, k.g, KVGet, k.op("keys", pattern), func(ctx context.Context) ([]string, error) {
		var (
			l   jetstream.KeyLister
			err error
		)
		if len(filters) == 0 {
			l, err = k.kv.ListKeys(ctx)
		} else {
			l, err = k.kv.ListKeysFiltered(ctx, filters...)
		}
		if err != nil {
			return nil, err
		}
		defer l.Stop()
		var keys []string
		for key := range l.Keys() {
			keys = append(keys, key)
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if len(keys) == 0 {
			return nil, jetstream.ErrNoKeysFound
		}
		return keys, nil
	})
}
