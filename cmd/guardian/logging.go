package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/lmittmann/tint"
	"github.com/nats-io/nats-server/v2/server"
)

// newLogger returns a logger writing to w: coloured text on a terminal (or
// with format text), JSON otherwise.
func newLogger(w io.Writer, level, format string) *slog.Logger {
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(level))
	tty := isTerminal(w)
	if format == "auto" {
		format = "json"
		if tty {
			format = "text"
		}
	}
	if format == "text" {
		noColor := !tty
		return slog.New(tint.NewTextHandler(w, &tint.Options{Level: lv, TimeFormat: "15:04:05.000", NoColor: noColor}))
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: lv}))
}

// natsLogger sends the embedded nats-server's log lines to slog.
type natsLogger struct{ l *slog.Logger }

var _ server.Logger = natsLogger{}

func (n natsLogger) log(level slog.Level, format string, v ...any) {
	n.l.Log(context.Background(), level, strings.TrimSpace(fmt.Sprintf(format, v...)))
}

func (n natsLogger) Noticef(format string, v ...any) { n.log(slog.LevelDebug, format, v...) }
func (n natsLogger) Warnf(format string, v ...any)   { n.log(slog.LevelWarn, format, v...) }
func (n natsLogger) Fatalf(format string, v ...any)  { n.log(slog.LevelError, format, v...) }
func (n natsLogger) Errorf(format string, v ...any)  { n.log(slog.LevelError, format, v...) }
func (n natsLogger) Debugf(format string, v ...any)  { n.log(slog.LevelDebug, format, v...) }
func (n natsLogger) Tracef(format string, v ...any)  { n.log(slog.LevelDebug-4, format, v...) }

// isTerminal reports whether w is a character device such as a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
