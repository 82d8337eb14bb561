package jsguard

import "testing"

func TestRedactURL(t *testing.T) {
	cases := []struct{ in, want string }{
		{"nats://127.0.0.1:4222", "nats://127.0.0.1:4222"},
		{"nats://user:s3cret@host:4222", "nats://user:***@host:4222"},
		{"nats://s3cr3tt0ken@host:4222", "nats://***@host:4222"},
		{"tls://u:p%40ss@host:4222", "tls://u:***@host:4222"},
		{"user:s3cret@host:4222", "user:***@host:4222"},
		{"nats://a:pw1@h1:4222,nats://b:pw2@h2:4222, nats://h3:4222", "nats://a:***@h1:4222,nats://b:***@h2:4222,nats://h3:4222"},
		{"nats://tok@h1,tok2@h2", "nats://***@h1,***@h2"},
		{"ws://u:p@host:8080/path", "ws://u:***@host:8080/path"},
		{"nats://u:p@[::1]:4222", "nats://u:***@[::1]:4222"},
		{"nats://u:p w@host\x7f", "nats://***@host\x7f"}, // unparsable: hide all before @
		{"", ""},
	}
	for _, tc := range cases {
		if got := redactURL(tc.in); got != tc.want {
			t.Errorf("redactURL(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
