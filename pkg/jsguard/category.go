package jsguard

import (
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"
)

// Category names a kind of guarded operation. Its audit code is "TIMEOUT_"
// followed by the category, so KVGet's code is TIMEOUT_KV_GET. Categories are
// plain strings so that they can travel in JSON and NATS subjects.
type Category string

// The seed categories, with the default budgets of DefaultPolicy.
const (
	NATSConnect          Category = "NATS_CONNECT"          // 10s
	NATSPublish          Category = "NATS_PUBLISH"          // 5s
	NATSSubscribe        Category = "NATS_SUBSCRIBE"        // 5s
	NATSStreamCreate     Category = "NATS_STREAM_CREATE"    // 15s
	KVCreate             Category = "KV_CREATE"             // 10s, bucket creation
	KVGet                Category = "KV_GET"                // 5s
	KVPut                Category = "KV_PUT"                // 5s
	KVDelete             Category = "KV_DELETE"             // 5s
	ExecutionIntent      Category = "EXECUTION_INTENT"      // 30s
	ExecutionContainment Category = "EXECUTION_CONTAINMENT" // 60s
	ExecutionExpiration  Category = "EXECUTION_EXPIRATION"  // 120s
	ApprovalCheck        Category = "APPROVAL_CHECK"        // 5s
	ApprovalGrant        Category = "APPROVAL_GRANT"        // 10s
	ReplayProcessing     Category = "REPLAY_PROCESSING"     // 300s
	ReplayValidation     Category = "REPLAY_VALIDATION"     // 60s
	APIRequest           Category = "API_REQUEST"           // 30s
	APIValidation        Category = "API_VALIDATION"        // 10s

	// ApprovalExpired is the category of an approval that ran out. No call
	// runs under it; kvapprovals emits its events. Its budget is unused.
	ApprovalExpired Category = "APPROVAL_EXPIRED"

	// The T1–T5 hierarchy levels, each also a category.
	T1Cache   Category = "T1_CACHE"   // 100ms, fallback: skip cache
	T2File    Category = "T2_FILE"    // 500ms, fallback: fallback content
	T3Layer   Category = "T3_LAYER"   // 2s, fallback: partial result
	T4Full    Category = "T4_FULL"    // 5s, fallback: core only
	T5Complex Category = "T5_COMPLEX" // 10s, fallback: abort with summary
)

// DefaultBudget is the budget of a category that the policy does not list.
const DefaultBudget = 30 * time.Second

// MaxBudget is the largest budget a policy accepts for any entry.
const MaxBudget = time.Hour

// CodePrefix starts every audit code.
const CodePrefix = "TIMEOUT_"

var codePattern = regexp.MustCompile(`^TIMEOUT_[A-Z0-9_]+$`)

// Code returns the category's deterministic audit code, "TIMEOUT_" + c.
func (c Category) Code() string { return CodePrefix + string(c) }

// Level returns the hierarchy level the category stands for, or LevelNone.
func (c Category) Level() Level {
	for l := T1; l <= T5; l++ {
		if levels[l].category == c {
			return l
		}
	}
	return LevelNone
}

// ParseCode returns the category whose code is code. It returns an error
// wrapping ErrInvalidCategory when code does not match ^TIMEOUT_[A-Z0-9_]+$.
// The category need not be registered.
func ParseCode(code string) (Category, error) {
	if !codePattern.MatchString(code) {
		return "", fmt.Errorf("%w: code %q must match %s", ErrInvalidCategory, code, codePattern)
	}
	return Category(strings.TrimPrefix(code, CodePrefix)), nil
}

// Level is a step of the T1–T5 timeout hierarchy.
type Level int

// The levels. LevelNone marks a call outside the hierarchy.
const (
	LevelNone Level = iota
	T1
	T2
	T3
	T4
	T5
)

type levelInfo struct {
	name     string
	category Category
	budget   time.Duration
	fallback string
}

var levels = [...]levelInfo{
	LevelNone: {name: ""},
	T1:        {"T1", T1Cache, 100 * time.Millisecond, "skip cache"},
	T2:        {"T2", T2File, 500 * time.Millisecond, "fallback content"},
	T3:        {"T3", T3Layer, 2 * time.Second, "partial result"},
	T4:        {"T4", T4Full, 5 * time.Second, "core only"},
	T5:        {"T5", T5Complex, 10 * time.Second, "abort with summary"},
}

// String returns "T1" … "T5", or "" for LevelNone.
func (l Level) String() string {
	if l < LevelNone || l > T5 {
		return fmt.Sprintf("Level(%d)", int(l))
	}
	return levels[l].name
}

// Category returns the level's category (T1Cache for T1), or "" for LevelNone.
func (l Level) Category() Category {
	if l <= LevelNone || l > T5 {
		return ""
	}
	return levels[l].category
}

// DefaultFallback describes what a caller at this level should fall back to
// when its budget runs out: skip cache, fallback content, partial result, core
// only, or abort with summary.
func (l Level) DefaultFallback() string {
	if l <= LevelNone || l > T5 {
		return ""
	}
	return levels[l].fallback
}

// ErrInvalidCategory is returned by Register and ParseCode for a malformed
// code, and by Register for a category that already exists.
var ErrInvalidCategory = errors.New("jsguard: invalid category")

var registry = struct {
	sync.RWMutex
	budgets map[Category]time.Duration
}{budgets: seedBudgets()}

func seedBudgets() map[Category]time.Duration {
	m := map[Category]time.Duration{
		NATSConnect:          10 * time.Second,
		NATSPublish:          5 * time.Second,
		NATSSubscribe:        5 * time.Second,
		NATSStreamCreate:     15 * time.Second,
		KVCreate:             10 * time.Second,
		KVGet:                5 * time.Second,
		KVPut:                5 * time.Second,
		KVDelete:             5 * time.Second,
		ExecutionIntent:      30 * time.Second,
		ExecutionContainment: 60 * time.Second,
		ExecutionExpiration:  120 * time.Second,
		ApprovalCheck:        5 * time.Second,
		ApprovalGrant:        10 * time.Second,
		ReplayProcessing:     300 * time.Second,
		ReplayValidation:     60 * time.Second,
		APIRequest:           30 * time.Second,
		APIValidation:        10 * time.Second,
		ApprovalExpired:      DefaultBudget,
	}
	for l := T1; l <= T5; l++ {
		m[levels[l].category] = levels[l].budget
	}
	return m
}

// Register adds a caller-defined category with its default budget, so that
// DefaultPolicy and every Policy that does not override it use that budget.
// It returns an error wrapping ErrInvalidCategory when the code is not
// ^TIMEOUT_[A-Z0-9_]+$ or the category exists already, and a validation error
// when budget is not in (0, 1h]. Register is safe for concurrent use.
func Register(c Category, budget time.Duration) error {
	if !codePattern.MatchString(c.Code()) {
		return fmt.Errorf("%w: code %q must match %s", ErrInvalidCategory, c.Code(), codePattern)
	}
	if err := checkBudget(c.Code(), budget); err != nil {
		return err
	}
	registry.Lock()
	defer registry.Unlock()
	if _, ok := registry.budgets[c]; ok {
		return fmt.Errorf("%w: %s is already registered", ErrInvalidCategory, c.Code())
	}
	registry.budgets[c] = budget
	return nil
}

// Categories returns every known category, seed and registered, sorted.
func Categories() []Category {
	registry.RLock()
	out := make([]Category, 0, len(registry.budgets))
	for c := range registry.budgets {
		out = append(out, c)
	}
	registry.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// Known reports whether c is a seed or registered category.
func Known(c Category) bool {
	registry.RLock()
	_, ok := registry.budgets[c]
	registry.RUnlock()
	return ok
}

func registeredBudgets() map[Category]time.Duration {
	registry.RLock()
	defer registry.RUnlock()
	m := make(map[Category]time.Duration, len(registry.budgets))
	for c, d := range registry.budgets {
		m[c] = d
	}
	return m
}
