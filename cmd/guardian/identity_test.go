package main

import (
	"errors"
	"os"
	"strings"
	"testing"
)

// TestCheckIdentityServer: GUARDIAN_IDENTITY=required refuses servers
// without the fixes for spoofed Nats-Request-Info headers.
func TestCheckIdentityServer(t *testing.T) {
	for v, ok := range map[string]bool{
		"2.15.2": true, "2.13.0": true, "3.0.0": true, "2.12.6": true, "2.12.10": true, "2.11.15": true, "v2.11.16": true,
		"2.14.0-beta.1": true,
		"2.12.5":        false, "2.11.14": false, "2.10.29": false, "1.4.1": false, "": false, "garbage": false, "2.x.1": false,
	} {
		err := checkIdentityServer(v)
		if (err == nil) != ok {
			t.Errorf("%q: %v, want ok=%v", v, err, ok)
		}
		if err != nil && !errors.Is(err, errOldServer) {
			t.Errorf("%q: %v does not wrap errOldServer", v, err)
		}
	}
}

// TestServeRefusesRequiredIdentityEmbedded: required identities need
// accounts, which the embedded server does not have; guardian says so and
// exits 1 before starting anything.
func TestServeRefusesRequiredIdentityEmbedded(t *testing.T) {
	dir := t.TempDir()
	_, stderr, code := runGuardian(t, append(baseEnv(), "GUARDIAN_IDENTITY=required", "GUARDIAN_DATA_DIR="+dir, "GUARDIAN_HTTP_ADDR="), "serve")
	if code != 1 || !strings.Contains(stderr, "GUARDIAN_IDENTITY=required needs callers in NATS accounts") {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("the refused start wrote %d entries to the data directory", len(entries))
	}
}
