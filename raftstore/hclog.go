package raftstore

import (
	"fmt"
	"io"
	"log"
	"strings"

	"github.com/hashicorp/go-hclog"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// zapHCLog lets hashicorp/raft log through zap, so raft's lines land in
// Caddy's logs with the same encoder and level filtering as ours.
type zapHCLog struct {
	z    *zap.Logger
	name string
	args []any
}

func newHCLog(z *zap.Logger) hclog.Logger { return &zapHCLog{z: z} }

func (l *zapHCLog) fields(args []any) []zap.Field {
	all := append(append([]any(nil), l.args...), args...)
	fs := make([]zap.Field, 0, len(all)/2+1)
	for i := 0; i < len(all); i += 2 {
		key := fmt.Sprint(all[i])
		if i+1 >= len(all) {
			fs = append(fs, zap.Any("extra", all[i]))
			break
		}
		key = strings.ReplaceAll(strings.ReplaceAll(key, "-", "_"), " ", "_")
		switch v := all[i+1].(type) {
		case hclog.Format:
			if len(v) > 0 {
				if f, ok := v[0].(string); ok {
					fs = append(fs, zap.String(key, fmt.Sprintf(f, v[1:]...)))
					continue
				}
			}
			fs = append(fs, zap.String(key, fmt.Sprint(v...)))
		case fmt.Stringer:
			fs = append(fs, zap.Stringer(key, v))
		case error:
			fs = append(fs, zap.NamedError(key, v))
		default:
			fs = append(fs, zap.Any(key, v))
		}
	}
	return fs
}

func (l *zapHCLog) Log(level hclog.Level, msg string, args ...any) {
	switch level {
	case hclog.Trace, hclog.Debug:
		l.Debug(msg, args...)
	case hclog.Warn:
		l.Warn(msg, args...)
	case hclog.Error:
		l.Error(msg, args...)
	default:
		l.Info(msg, args...)
	}
}
func (l *zapHCLog) Trace(msg string, args ...any) { l.z.Debug(msg, l.fields(args)...) }
func (l *zapHCLog) Debug(msg string, args ...any) { l.z.Debug(msg, l.fields(args)...) }
func (l *zapHCLog) Info(msg string, args ...any)  { l.z.Info(msg, l.fields(args)...) }
func (l *zapHCLog) Warn(msg string, args ...any) {
	if routine[msg] {
		l.z.Info(msg, l.fields(args)...)
		return
	}
	l.z.Warn(msg, l.fields(args)...)
}

// routine are Raft's WARN messages that a healthy cluster prints in normal
// operation (starting up, electing after a graceful leader hand-over, a new
// node or gateway joining with an empty log and being sent the log from
// its start): at INFO, so WARN means something is wrong. The leader change
// itself is logged by the store.
var routine = map[string]bool{
	"heartbeat timeout reached, starting election":  true,
	"Election timeout reached, restarting election": true,
	"no known peers, aborting election":             true,
	"appendEntries rejected, sending older logs":    true,
	"failed to get previous log":                    true,
	// A node back from a partition or restart asks for pre-votes with a
	// stale term; the others refuse it, as they should.
	"rejecting pre-vote request since our last term is greater": true,
	"rejecting pre-vote request since we have a leader":         true,
	"rejecting vote request since we have a leader":             true,
}

// Error logs at ERROR, except a connection that ends because this node is
// stopping (a graceful stop is not a fault).
func (l *zapHCLog) Error(msg string, args ...any) {
	for i := 0; i+1 < len(args); i += 2 {
		if err, ok := args[i+1].(error); ok && strings.Contains(err.Error(), "transport shutdown") {
			l.z.Info(msg, l.fields(args)...)
			return
		}
	}
	l.z.Error(msg, l.fields(args)...)
}
func (l *zapHCLog) IsTrace() bool      { return false }
func (l *zapHCLog) IsDebug() bool      { return l.z.Core().Enabled(zapcore.DebugLevel) }
func (l *zapHCLog) IsInfo() bool       { return l.z.Core().Enabled(zapcore.InfoLevel) }
func (l *zapHCLog) IsWarn() bool       { return l.z.Core().Enabled(zapcore.WarnLevel) }
func (l *zapHCLog) IsError() bool      { return l.z.Core().Enabled(zapcore.ErrorLevel) }
func (l *zapHCLog) ImpliedArgs() []any { return l.args }
func (l *zapHCLog) With(args ...any) hclog.Logger {
	return &zapHCLog{z: l.z, name: l.name, args: append(append([]any(nil), l.args...), args...)}
}
func (l *zapHCLog) Name() string { return l.name }
func (l *zapHCLog) Named(name string) hclog.Logger {
	n := name
	if l.name != "" {
		n = l.name + "." + name
	}
	return &zapHCLog{z: l.z.Named(name), name: n, args: l.args}
}
func (l *zapHCLog) ResetNamed(name string) hclog.Logger {
	return &zapHCLog{z: l.z.Named(name), name: name, args: l.args}
}
func (l *zapHCLog) SetLevel(hclog.Level) {}
func (l *zapHCLog) GetLevel() hclog.Level {
	switch {
	case l.IsDebug():
		return hclog.Debug
	case l.IsInfo():
		return hclog.Info
	case l.IsWarn():
		return hclog.Warn
	}
	return hclog.Error
}
func (l *zapHCLog) StandardLogger(*hclog.StandardLoggerOptions) *log.Logger {
	return zap.NewStdLog(l.z)
}
func (l *zapHCLog) StandardWriter(*hclog.StandardLoggerOptions) io.Writer {
	return zapWriter{l.z}
}

type zapWriter struct{ z *zap.Logger }

func (w zapWriter) Write(p []byte) (int, error) {
	w.z.Info(strings.TrimSpace(string(p)))
	return len(p), nil
}
