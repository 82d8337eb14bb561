package main

import (
	"context"
	"errors"
	"strings"
	"sync"
)

// group runs long-lived parts, each a Run(ctx) error, until the first one
// returns or the parent ends; then it cancels the rest and waits for them.
// It returns the error of the first part that returned before the group was
// cancelled (errStoppedEarly when that part returned nil), or nil.
type group struct {
	parts []part
}

type part struct {
	name string
	run  func(ctx context.Context) error
}

func (g *group) add(name string, run func(ctx context.Context) error) {
	g.parts = append(g.parts, part{name, run})
}

func (g *group) run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	for _, p := range g.parts {
		wg.Go(func() {
			err := p.run(ctx)
			if ctx.Err() == nil {
				// A part ends before the group only when something broke.
				if err == nil {
					err = errStoppedEarly
				}
				once.Do(func() { first = &partError{p.name, err} })
			}
			cancel()
		})
	}
	wg.Wait()
	return first
}

// errStoppedEarly is the error of a part that returned nil while the group
// still ran.
var errStoppedEarly = errors.New("stopped unexpectedly")

type partError struct {
	name string
	err  error
}

func (e *partError) Error() string {
	if msg := e.err.Error(); !strings.HasPrefix(msg, e.name+": ") {
		return e.name + ": " + msg
	}
	return e.err.Error() // it names the part already
}
func (e *partError) Unwrap() error { return e.err }
