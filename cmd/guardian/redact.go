package main

import (
	"net/url"
	"strings"
)

// redactURL returns a URL, or a comma-separated list of them, fit for logs
// and `guardian config`: a password or token becomes ***, and so do a path
// and a query, which often carry a webhook's secret. What does not parse as
// a URL is replaced whole.
func redactURL(list string) string {
	if list == "" {
		return ""
	}
	parts := strings.Split(list, ",")
	for i, p := range parts {
		parts[i] = redactOneURL(strings.TrimSpace(p))
	}
	return strings.Join(parts, ",")
}

func redactOneURL(s string) string {
	raw, scheme := s, true
	if !strings.Contains(s, "://") {
		// nats.go accepts host:port without a scheme.
		raw, scheme = "nats://"+s, false
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "[redacted]"
	}
	var b strings.Builder
	if scheme {
		b.WriteString(u.Scheme + "://")
	}
	if u.User != nil {
		if _, ok := u.User.Password(); ok {
			b.WriteString(u.User.Username() + ":***@")
		} else {
			b.WriteString("***@") // a lone user part is a token
		}
	}
	b.WriteString(u.Host)
	if u.Path != "" && u.Path != "/" || u.RawPath != "" {
		b.WriteString("/***")
	}
	if u.RawQuery != "" || u.ForceQuery {
		b.WriteString("?***")
	}
	return b.String()
}
