package e2e

// A small YAML reader for docker-compose.yml and prometheus.yml, and compose's
// ${VAR} interpolation. The module has no YAML parser among its
// dependencies, and these tests must not add one. It understands what the
// project's files use and refuses everything else with an error naming the
// line, so a new construct fails the tests instead of being misread:
//
//   - block mappings and sequences (a sequence may sit at its key's indent)
//   - single-line flow sequences and mappings: [a, "b"], { k: v }
//   - plain, 'single' and "double" quoted scalars; every scalar is a string,
//     an empty value is nil
//   - comments, anchors (&name), aliases (*name) and merge keys (<<)

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

type depLine struct {
	num, indent int
	text        string
}

type depYAML struct {
	lines   []depLine
	i       int
	anchors map[string]any
}

// depParseYAML parses src into map[string]any, []any, string and nil values.
func depParseYAML(src string) (any, error) {
	p := &depYAML{anchors: map[string]any{}}
	for n, raw := range strings.Split(src, "\n") {
		raw = strings.TrimRight(raw, " \r")
		body := strings.TrimLeft(raw, " ")
		if strings.HasPrefix(body, "\t") {
			return nil, fmt.Errorf("line %d: tab in indentation", n+1)
		}
		text, err := depStripComment(body)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n+1, err)
		}
		text = strings.TrimRight(text, " \t")
		if text == "" || text == "---" {
			continue
		}
		if text == "..." || strings.HasPrefix(text, "%") {
			return nil, fmt.Errorf("line %d: directives and document ends are not supported", n+1)
		}
		p.lines = append(p.lines, depLine{num: n + 1, indent: len(raw) - len(body), text: text})
	}
	if len(p.lines) == 0 {
		return nil, nil
	}
	if p.lines[0].indent != 0 {
		return nil, fmt.Errorf("line %d: the document must start at column 1", p.lines[0].num)
	}
	v, err := p.block(0)
	if err != nil {
		return nil, err
	}
	if p.i < len(p.lines) {
		return nil, fmt.Errorf("line %d: unexpected indentation or content", p.lines[p.i].num)
	}
	return v, nil
}

// depStripComment removes a comment: '#' at the start or after a blank,
// outside quotes.
func depStripComment(s string) (string, error) {
	var quote byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote == '"':
			if c == '\\' {
				i++
			} else if c == '"' {
				quote = 0
			}
		case quote == '\'':
			if c == '\'' {
				if i+1 < len(s) && s[i+1] == '\'' {
					i++
				} else {
					quote = 0
				}
			}
		case c == '"' || c == '\'':
			if i == 0 || strings.IndexByte(" [{,:-", s[i-1]) >= 0 {
				quote = c
			}
		case c == '#':
			if i == 0 || s[i-1] == ' ' || s[i-1] == '\t' {
				return s[:i], nil
			}
		}
	}
	if quote != 0 {
		return "", errors.New("unterminated quoted string (multi-line strings are not supported)")
	}
	return s, nil
}

func depIsSeqItem(text string) bool { return text == "-" || strings.HasPrefix(text, "- ") }

// block parses the node starting at the current line if it is indented at
// least minIndent; otherwise the node is nil.
func (p *depYAML) block(minIndent int) (any, error) {
	if p.i >= len(p.lines) || p.lines[p.i].indent < minIndent {
		return nil, nil
	}
	l := p.lines[p.i]
	if depIsSeqItem(l.text) {
		return p.seq(l.indent)
	}
	return p.mapping(l.indent)
}

func (p *depYAML) mapping(indent int) (any, error) {
	m := map[string]any{}
	var merges []any
	for p.i < len(p.lines) && p.lines[p.i].indent == indent && !depIsSeqItem(p.lines[p.i].text) {
		l := p.lines[p.i]
		key, rest, ok, err := depSplitKey(l.text)
		if err != nil || !ok {
			return nil, fmt.Errorf("line %d: expected \"key: value\" in a mapping: %q", l.num, l.text)
		}
		p.i++
		v, err := p.value(l, rest, true)
		if err != nil {
			return nil, err
		}
		if key == "<<" {
			merges = append(merges, v)
			continue
		}
		if _, dup := m[key]; dup {
			return nil, fmt.Errorf("line %d: duplicate key %q", l.num, key)
		}
		m[key] = v
	}
	if p.i < len(p.lines) && p.lines[p.i].indent > indent {
		return nil, fmt.Errorf("line %d: unexpected indentation", p.lines[p.i].num)
	}
	// Merge keys: keys of the mapping itself win, then earlier merges.
	for _, mv := range merges {
		srcs := []any{mv}
		if list, ok := mv.([]any); ok {
			srcs = list
		}
		for _, s := range srcs {
			sm, ok := s.(map[string]any)
			if !ok {
				return nil, errors.New("a merge key (<<) needs a mapping or a list of mappings")
			}
			for k, v := range sm {
				if _, ok := m[k]; !ok {
					m[k] = v
				}
			}
		}
	}
	return m, nil
}

func (p *depYAML) seq(indent int) (any, error) {
	out := []any{}
	for p.i < len(p.lines) && p.lines[p.i].indent == indent && depIsSeqItem(p.lines[p.i].text) {
		l := p.lines[p.i]
		rest := strings.TrimLeft(l.text[1:], " ")
		if _, _, isMap, err := depSplitKey(rest); err == nil && isMap && !strings.HasPrefix(rest, "&") {
			// "- key: value": a mapping whose keys line up with "key".
			p.lines[p.i] = depLine{num: l.num, indent: indent + len(l.text) - len(rest), text: rest}
			v, err := p.mapping(p.lines[p.i].indent)
			if err != nil {
				return nil, err
			}
			out = append(out, v)
			continue
		}
		p.i++
		v, err := p.value(l, rest, false)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	if p.i < len(p.lines) && p.lines[p.i].indent > indent {
		return nil, fmt.Errorf("line %d: unexpected indentation", p.lines[p.i].num)
	}
	return out, nil
}

// value parses what follows "key:" or "-" on line l; a nested block follows
// on the next lines when rest is empty.
func (p *depYAML) value(l depLine, rest string, inMapping bool) (any, error) {
	anchor := ""
	if strings.HasPrefix(rest, "&") {
		name, after, _ := strings.Cut(rest, " ")
		anchor, rest = name[1:], strings.TrimSpace(after)
		if anchor == "" {
			return nil, fmt.Errorf("line %d: empty anchor name", l.num)
		}
	}
	var v any
	var err error
	switch {
	case rest == "":
		switch {
		case p.i < len(p.lines) && p.lines[p.i].indent > l.indent:
			v, err = p.block(l.indent + 1)
		case inMapping && p.i < len(p.lines) && p.lines[p.i].indent == l.indent && depIsSeqItem(p.lines[p.i].text):
			v, err = p.seq(l.indent)
		}
	case strings.HasPrefix(rest, "*"):
		var ok bool
		if v, ok = p.anchors[rest[1:]]; !ok {
			return nil, fmt.Errorf("line %d: unknown alias %q", l.num, rest)
		}
	case strings.HasPrefix(rest, "|") || strings.HasPrefix(rest, ">"):
		return nil, fmt.Errorf("line %d: block scalars (| and >) are not supported", l.num)
	case strings.HasPrefix(rest, "!"):
		return nil, fmt.Errorf("line %d: tags are not supported", l.num)
	case strings.HasPrefix(rest, "[") || strings.HasPrefix(rest, "{"):
		v, err = depParseFlow(rest)
	default:
		v, err = depScalar(rest)
	}
	if err != nil {
		return nil, fmt.Errorf("line %d: %w", l.num, err)
	}
	if anchor != "" {
		p.anchors[anchor] = v
	}
	return v, nil
}

// depSplitKey splits "key: rest". ok is false when text is not a mapping
// entry (a scalar, possibly containing ':' without a blank after it).
func depSplitKey(text string) (key, rest string, ok bool, err error) {
	if text == "" || strings.IndexByte("[{&*|>!", text[0]) >= 0 {
		return "", "", false, nil
	}
	if text[0] == '"' || text[0] == '\'' {
		end := depQuotedEnd(text)
		if end < 0 {
			return "", "", false, errors.New("unterminated quote")
		}
		after := text[end+1:]
		if after != ":" && !strings.HasPrefix(after, ": ") {
			return "", "", false, nil
		}
		k, err := depScalar(text[:end+1])
		if err != nil {
			return "", "", false, err
		}
		return k.(string), strings.TrimSpace(after[1:]), true, nil
	}
	for i := 0; i < len(text); i++ {
		if text[i] == ':' && (i+1 == len(text) || text[i+1] == ' ') {
			return strings.TrimSpace(text[:i]), strings.TrimSpace(text[i+1:]), true, nil
		}
	}
	return "", "", false, nil
}

// depQuotedEnd returns the index of the quote closing the string s starts
// with, or -1.
func depQuotedEnd(s string) int {
	q := s[0]
	for i := 1; i < len(s); i++ {
		switch {
		case q == '"' && s[i] == '\\':
			i++
		case s[i] == q && q == '\'' && i+1 < len(s) && s[i+1] == '\'':
			i++
		case s[i] == q:
			return i
		}
	}
	return -1
}

// depScalar returns the string a scalar stands for; "" is nil.
func depScalar(s string) (any, error) {
	s = strings.TrimSpace(s)
	if s == "" || s == "~" || s == "null" {
		return nil, nil
	}
	if s[0] != '"' && s[0] != '\'' {
		if strings.HasPrefix(s, "*") || strings.HasPrefix(s, "&") {
			return nil, fmt.Errorf("anchors and aliases are supported only as whole values: %q", s)
		}
		return s, nil
	}
	end := depQuotedEnd(s)
	if end != len(s)-1 {
		return nil, fmt.Errorf("bad quoted string %s", s)
	}
	body := s[1:end]
	if s[0] == '\'' {
		return strings.ReplaceAll(body, "''", "'"), nil
	}
	var b strings.Builder
	for i := 0; i < len(body); i++ {
		if body[i] != '\\' {
			b.WriteByte(body[i])
			continue
		}
		i++
		if i == len(body) {
			return nil, fmt.Errorf("bad escape in %s", s)
		}
		switch body[i] {
		case '\\', '"', '/':
			b.WriteByte(body[i])
		case 'n':
			b.WriteByte('\n')
		case 't':
			b.WriteByte('\t')
		default:
			return nil, fmt.Errorf("unsupported escape \\%c in %s", body[i], s)
		}
	}
	return b.String(), nil
}

// depParseFlow parses a single-line flow sequence or mapping.
func depParseFlow(s string) (any, error) {
	f := &depFlow{s: s}
	v, err := f.value("")
	if err != nil {
		return nil, err
	}
	f.space()
	if f.i != len(f.s) {
		return nil, fmt.Errorf("unexpected %q after a flow collection (flow collections must fit on one line)", f.s[f.i:])
	}
	return v, nil
}

type depFlow struct {
	s string
	i int
}

func (f *depFlow) space() {
	for f.i < len(f.s) && f.s[f.i] == ' ' {
		f.i++
	}
}

// value parses one value; stops are the bytes that end a plain scalar.
func (f *depFlow) value(stops string) (any, error) {
	f.space()
	if f.i == len(f.s) {
		return nil, errors.New("unterminated flow collection (flow collections must fit on one line)")
	}
	switch c := f.s[f.i]; c {
	case '[':
		f.i++
		out := []any{}
		for {
			f.space()
			if f.i < len(f.s) && f.s[f.i] == ']' {
				f.i++
				return out, nil
			}
			v, err := f.value(",]")
			if err != nil {
				return nil, err
			}
			out = append(out, v)
			f.space()
			if f.i < len(f.s) && f.s[f.i] == ',' {
				f.i++
			} else if f.i >= len(f.s) || f.s[f.i] != ']' {
				return nil, errors.New("expected , or ] in a flow sequence")
			}
		}
	case '{':
		f.i++
		out := map[string]any{}
		for {
			f.space()
			if f.i < len(f.s) && f.s[f.i] == '}' {
				f.i++
				return out, nil
			}
			k, err := f.value(":,}")
			if err != nil {
				return nil, err
			}
			ks, ok := k.(string)
			if !ok || f.i >= len(f.s) || f.s[f.i] != ':' {
				return nil, errors.New("expected key: value in a flow mapping")
			}
			f.i++
			v, err := f.value(",}")
			if err != nil {
				return nil, err
			}
			out[ks] = v
			f.space()
			if f.i < len(f.s) && f.s[f.i] == ',' {
				f.i++
			} else if f.i >= len(f.s) || f.s[f.i] != '}' {
				return nil, errors.New("expected , or } in a flow mapping")
			}
		}
	case '"', '\'':
		end := depQuotedEnd(f.s[f.i:])
		if end < 0 {
			return nil, errors.New("unterminated quote")
		}
		v, err := depScalar(f.s[f.i : f.i+end+1])
		f.i += end + 1
		return v, err
	default:
		start := f.i
		for f.i < len(f.s) && strings.IndexByte(stops, f.s[f.i]) < 0 && strings.IndexByte("[]{}", f.s[f.i]) < 0 {
			f.i++
		}
		return depScalar(f.s[start:f.i])
	}
}

// depInterpolate expands compose variables in s: $$, $NAME, ${NAME},
// ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error},
// ${NAME:+alt} and ${NAME+alt}; defaults may hold variables themselves.
func depInterpolate(s string, lookup func(string) (string, bool)) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' {
			b.WriteByte(s[i])
			continue
		}
		if i+1 == len(s) {
			b.WriteByte('$')
			continue
		}
		switch next := s[i+1]; {
		case next == '$':
			b.WriteByte('$')
			i++
		case next == '{':
			depth, end := 0, -1
			for j := i + 1; j < len(s) && end < 0; j++ {
				switch s[j] {
				case '{':
					depth++
				case '}':
					if depth--; depth == 0 {
						end = j
					}
				}
			}
			if end < 0 {
				return "", fmt.Errorf("unterminated ${ in %q", s)
			}
			v, err := depExpand(s[i+2:end], lookup)
			if err != nil {
				return "", err
			}
			b.WriteString(v)
			i = end
		case next == '_' || 'A' <= next && next <= 'Z' || 'a' <= next && next <= 'z':
			j := i + 1
			for j < len(s) && depNameByte(s[j]) {
				j++
			}
			v, _ := lookup(s[i+1 : j])
			b.WriteString(v)
			i = j - 1
		default:
			b.WriteByte('$')
		}
	}
	return b.String(), nil
}

func depNameByte(c byte) bool {
	return c == '_' || 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9'
}

// depExpand expands the inside of ${...}.
func depExpand(expr string, lookup func(string) (string, bool)) (string, error) {
	n := 0
	for n < len(expr) && depNameByte(expr[n]) {
		n++
	}
	name, op := expr[:n], expr[n:]
	if name == "" || '0' <= name[0] && name[0] <= '9' {
		return "", fmt.Errorf("bad variable name in ${%s}", expr)
	}
	val, set := lookup(name)
	for _, o := range []string{":-", ":?", ":+", "-", "?", "+"} {
		if !strings.HasPrefix(op, o) {
			continue
		}
		arg, err := depInterpolate(op[len(o):], lookup)
		if err != nil {
			return "", err
		}
		empty := !set || (strings.HasPrefix(o, ":") && val == "")
		switch strings.TrimPrefix(o, ":") {
		case "-":
			if empty {
				return arg, nil
			}
		case "?":
			if empty {
				return "", fmt.Errorf("variable %s: %s", name, arg)
			}
		case "+":
			if empty {
				return "", nil
			}
			return arg, nil
		}
		return val, nil
	}
	if op != "" {
		return "", fmt.Errorf("unsupported expansion ${%s}", expr)
	}
	return val, nil
}

// depInterpolateAll applies depInterpolate to every string in v.
func depInterpolateAll(v any, lookup func(string) (string, bool)) (any, error) {
	switch x := v.(type) {
	case string:
		return depInterpolate(x, lookup)
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			var err error
			if out[i], err = depInterpolateAll(e, lookup); err != nil {
				return nil, err
			}
		}
		return out, nil
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			var err error
			if out[k], err = depInterpolateAll(e, lookup); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	return v, nil
}

// depPath walks v along keys (mapping keys, or decimal indexes of lists).
func depPath(v any, keys ...string) any {
	for _, k := range keys {
		switch x := v.(type) {
		case map[string]any:
			v = x[k]
		case []any:
			i := -1
			fmt.Sscan(k, &i)
			if i < 0 || i >= len(x) {
				return nil
			}
			v = x[i]
		default:
			return nil
		}
	}
	return v
}

// depStrings returns v as a list of strings: a list of scalars, or one
// scalar.
func depStrings(v any) []string {
	switch x := v.(type) {
	case string:
		return []string{x}
	case []any:
		var out []string
		for _, e := range x {
			if s, ok := e.(string); ok {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}

// depEnvironment returns a compose service's environment, given as a mapping
// or as a list of KEY=VALUE.
func depEnvironment(svc any) (map[string]string, error) {
	out := map[string]string{}
	switch env := depPath(svc, "environment").(type) {
	case nil:
	case map[string]any:
		for k, v := range env {
			s, ok := v.(string)
			if !ok {
				return nil, fmt.Errorf("environment %s: want a string value, got %T (pass-through variables are not used here)", k, v)
			}
			out[k] = s
		}
	case []any:
		for _, e := range env {
			s, _ := e.(string)
			k, v, ok := strings.Cut(s, "=")
			if !ok {
				return nil, fmt.Errorf("environment entry %q: want KEY=VALUE", s)
			}
			out[k] = v
		}
	default:
		return nil, fmt.Errorf("environment: want a mapping or a list, got %T", env)
	}
	return out, nil
}

// depSortedKeys returns m's keys in order.
func depSortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
