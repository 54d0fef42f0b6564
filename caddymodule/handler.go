package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/raftquota/raftquota/raftstore"
	"github.com/raftquota/raftquota/raftstore/state"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler gates requests on a replicated quota. Each request is charged to
// the token its key names, as one linearizable step of the cluster's log: no
// request is ever admitted past a token's limit, however many run at once
// and on whichever node. Allowed requests go on to the next handler
// (usually reverse_proxy to storage); denied ones get 401, 403 or 429 with
// RateLimit headers and an RFC 9457 problem body; when the cluster has no
// quorum the answer is 503 with Retry-After (or, with on_unavailable allow,
// the request passes).
//
// Sets placeholders for later handlers and logs: {http.quota.decision}
// (allowed, denied, unavailable), {http.quota.reason}, {http.quota.remaining},
// {http.quota.limit} and {http.quota.token_fingerprint}.
type Handler struct {
	// Key is where the token is read from, usually a header placeholder such
	// as {http.request.header.X-Quota-Token}. Required. A missing, empty or
	// malformed key gets 401 without asking the cluster.
	Key string `json:"key,omitempty"`

	// Cost is how many uploads one request counts as. Default 1.
	Cost int64 `json:"cost,omitempty"`

	// Bytes is a placeholder giving the bytes to charge, typically
	// {http.request.header.Content-Length}. When set, a request without a
	// value gets 411, and a body longer than the value is cut off (the
	// request then fails and, with charge_on success, is refunded).
	Bytes string `json:"bytes,omitempty"`

	// ChargeOn is "success" (default) or "attempt". With success the charge
	// is taken before forwarding and refunded when the next handler fails or
	// answers with a status of 400 or more, so failed uploads do not use
	// quota. With attempt every allowed request counts.
	ChargeOn string `json:"charge_on,omitempty"`

	// IdempotencyKey is a placeholder for a per-request key, such as
	// {http.request.header.Idempotency-Key} or a path segment. Requests with
	// the same token and key are charged once; a repeat is let through
	// without another charge.
	IdempotencyKey string `json:"idempotency_key,omitempty"`

	// OnUnavailable is what happens when the cluster cannot decide (no
	// quorum, timeout): "deny" (default, 503 with Retry-After) or "allow"
	// (pass the request, logging each one at WARN).
	OnUnavailable string `json:"on_unavailable,omitempty"`

	// CheckOnly denies exactly as a consume would, from linearizable state,
	// but charges nothing: for the routes that lead up to the charging one.
	CheckOnly bool `json:"check_only,omitempty"`

	// DryRun decides, logs and counts, but never blocks.
	DryRun bool `json:"dry_run,omitempty"`

	// Timeout bounds how long a request waits for the cluster's decision,
	// retries included. Default 3s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// Pools are placeholders naming pools (shared quotas, by name) to charge
	// besides the token and the token's own pools, e.g.
	// {http.quota.s3.bucket} or {http.request.host}: one decision charges
	// them all or none. At most 4.
	Pools []string `json:"pools,omitempty"`

	// PoolMissing is what happens when a pool a placeholder names does
	// not exist (or the placeholder is empty): "refuse" (default, 403) or
	// "skip" (charge the other quotas).
	PoolMissing string `json:"pool_missing,omitempty"`

	// S3, when set, makes the handler understand the S3 API on its routes:
	// one object is charged one unit (cost) however it is uploaded, bytes
	// are the object's bytes, multipart uploads are refunded when aborted
	// or left incomplete, the token defaults to the request's access key,
	// and refusals are S3 XML errors. See S3. Not with bytes, check_only,
	// idempotency_key or charge_on attempt.
	S3 *S3 `json:"s3,omitempty"`

	app     *App
	logger  *zap.Logger
	denials *denialLog
	outage  *everyInterval
}

// everyInterval admits one event per outageLogInterval and counts the
// others.
type everyInterval struct {
	mu      sync.Mutex
	last    time.Time
	skipped int
}

// outageLogInterval is how often an ongoing outage is logged.
const outageLogInterval = 10 * time.Second

func (e *everyInterval) admit(now time.Time) (bool, int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if now.Sub(e.last) < outageLogInterval {
		e.skipped++
		return false, 0
	}
	n := e.skipped
	e.last, e.skipped = now, 0
	return true, n
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.quota",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision sets defaults and finds the quota app (loading it with its
// defaults when the config has none, for the single-node embedded setup).
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	h.denials = newDenialLog()
	h.outage = new(everyInterval)
	if h.Cost == 0 {
		h.Cost = 1
	}
	if h.ChargeOn == "" {
		h.ChargeOn = "success"
	}
	if h.OnUnavailable == "" {
		h.OnUnavailable = "deny"
	}
	if h.PoolMissing == "" {
		h.PoolMissing = "refuse"
	}
	if h.Timeout == 0 {
		h.Timeout = caddy.Duration(3 * time.Second)
	}
	// A key or bytes value without a placeholder is almost always a
	// forgotten pair of braces: every client on one token, or every request
	// refused. Said at WARN, so `caddy validate` shows it. (The key's value
	// is not logged: it would be a token.)
	if h.S3 != nil && h.S3.MultipartExpiry == 0 {
		h.S3.MultipartExpiry = caddy.Duration(state.DefaultUploadExpiry)
	}
	if (h.S3 == nil || h.Key != "") && !strings.Contains(h.Key, "{") {
		h.logger.Warn("quota: key holds no placeholder, so every request is charged to the one token it names; to read a header write e.g. key {http.request.header.X-Quota-Token}")
	}
	if h.Bytes != "" && !strings.Contains(h.Bytes, "{") {
		if _, err := strconv.ParseInt(h.Bytes, 10, 64); err != nil {
			return fmt.Errorf("quota: bytes %q is neither a placeholder nor a number; write e.g. bytes {http.request.header.Content-Length}", h.Bytes)
		}
		h.logger.Warn("quota: bytes holds no placeholder, so every request is charged the same number of bytes; for the upload's size write bytes {http.request.header.Content-Length}", zap.String("bytes", h.Bytes))
	}
	app, err := ctx.App("quota")
	if err != nil {
		return fmt.Errorf("quota: loading quota app: %v", err)
	}
	h.app = app.(*App) // provisioning the app registered the metrics
	return nil
}

// Validate reports a config mistake in words for the user.
func (h *Handler) Validate() error {
	if h.S3 != nil {
		switch {
		case h.Bytes != "":
			return fmt.Errorf("quota: s3 charges the object's bytes itself; remove bytes")
		case h.CheckOnly:
			return fmt.Errorf("quota: s3 and check_only do not go together")
		case h.IdempotencyKey != "":
			return fmt.Errorf("quota: s3 keys multipart uploads by their upload id; remove idempotency_key")
		case h.ChargeOn == "attempt":
			return fmt.Errorf("quota: s3 refunds failed uploads; charge_on attempt does not apply")
		case h.S3.MultipartExpiry < 0:
			return fmt.Errorf("quota: multipart_expiry must be positive")
		}
		seen := make(map[string]bool, len(h.S3.Domains))
		for i, d := range h.S3.Domains {
			n, err := normalizeDomain(d)
			if err != nil {
				return fmt.Errorf("quota: %v", err)
			}
			if seen[n] {
				return fmt.Errorf("quota: s3 domain %q is listed twice", d)
			}
			seen[n], h.S3.Domains[i] = true, n
		}
	} else if strings.TrimSpace(h.Key) == "" {
		return fmt.Errorf("quota: key is required, e.g. key {http.request.header.X-Quota-Token}")
	}
	if h.Cost < 0 {
		return fmt.Errorf("quota: cost must be at least 1, got %d", h.Cost)
	}
	if h.ChargeOn != "success" && h.ChargeOn != "attempt" {
		return fmt.Errorf("quota: charge_on must be success or attempt, got %q", h.ChargeOn)
	}
	if h.OnUnavailable != "deny" && h.OnUnavailable != "allow" {
		return fmt.Errorf("quota: on_unavailable must be deny or allow, got %q", h.OnUnavailable)
	}
	if h.Timeout < 0 {
		return fmt.Errorf("quota: timeout must be positive")
	}
	if h.PoolMissing != "" && h.PoolMissing != "refuse" && h.PoolMissing != "skip" {
		return fmt.Errorf("quota: pool_missing must be refuse or skip, got %q", h.PoolMissing)
	}
	if len(h.Pools) > state.MaxTokenPools {
		return fmt.Errorf("quota: at most %d pool placeholders, got %d", state.MaxTokenPools, len(h.Pools))
	}
	return nil
}

// exchange is one request through the quota handler. It carries what
// every step of it needs — the writer, the request, the next handler, the
// replacer, the node, and what is being charged — so a step takes only
// its own arguments.
type exchange struct {
	h     *Handler
	w     http.ResponseWriter
	r     *http.Request
	next  caddyhttp.Handler
	repl  *caddy.Replacer
	store *raftstore.Store // once waitStore has it
	// key is the token's hash, pools the pools the request names, c what
	// the decision is asked for.
	key   state.TokenKey
	pools []string
	c     charged
	start time.Time // when the handler began
}

// charged is what a decision was asked for.
type charged struct {
	id           state.RequestID
	fp           string
	units, bytes int64
	check        bool // nothing was charged
}

// forward passes the request on to the next handler.
func (x *exchange) forward() error { return x.forwardTo(x.w) }

// forwardTo passes the request on to the next handler, answering to w.
func (x *exchange) forwardTo(w http.ResponseWriter) error {
	start := time.Now()
	err := x.next.ServeHTTP(w, x.r)
	observeHandlerStep(stepUpstream, time.Since(start))
	return err
}

// ask asks the cluster for x.request()'s decision: a check, or a consume.
func (x *exchange) ask(ctx context.Context, check bool) (state.Decision, error) {
	start := time.Now()
	observeHandlerStep(stepPrepare, start.Sub(x.start))
	var d state.Decision
	var err error
	if check {
		d, err = x.store.Check(ctx, x.request())
	} else {
		d, err = x.store.Consume(ctx, x.request())
	}
	took := time.Since(start)
	consumeSeconds.Observe(took.Seconds())
	observeHandlerStep(stepDecide, took)
	return d, err
}

// waitStore waits for this Caddy's node (a node that is still starting
// holds the request until it can decide); false when ctx ends first.
func (x *exchange) waitStore(ctx context.Context) bool {
	x.store = x.h.app.waitStore(ctx)
	return x.store != nil
}

// setToken names the token the request spends, and its fingerprint (the
// raw name is never logged).
func (x *exchange) setToken(key state.TokenKey) {
	x.key = key
	x.c.fp = x.store.FingerprintOf(key)
	x.repl.Set("http.quota.token_fingerprint", x.c.fp)
}

// namePools finds the pools the request names through the pool
// placeholders; false when one names no pool that could exist and
// pool_missing is refuse.
func (x *exchange) namePools() bool {
	for _, p := range x.h.Pools {
		n := x.repl.ReplaceAll(p, "")
		if state.ValidatePoolName(n) != nil {
			if x.h.PoolMissing == "skip" {
				continue
			}
			return false
		}
		x.pools = append(x.pools, n)
	}
	return true
}

// request is the decision to ask for: x.c's id and amounts, to the token
// and the pools.
func (x *exchange) request() state.ConsumeRequest {
	return state.ConsumeRequest{ID: x.c.id, Key: x.key, Units: x.c.units, Bytes: x.c.bytes, Pools: x.pools, SkipMissingPools: x.h.PoolMissing == "skip"}
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	x := &exchange{h: h, w: w, r: r, next: next, repl: r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer), start: time.Now()}
	err := h.protocol().serve(x)
	observeHandlerStep(stepHandler, time.Since(x.start))
	return err
}

// protocol is how a route meets the cluster: which requests it charges,
// for what, and how it words a refusal. The plain gate takes its token
// from a placeholder and answers problem+json; S3 (s3.go) classifies S3
// operations and answers S3 error documents.
type protocol interface {
	serve(x *exchange) error
	refusal(x *exchange, a refusal) error
}

func (h *Handler) protocol() protocol {
	if h.S3 != nil {
		return s3Protocol{}
	}
	return plainGate{}
}

// plainGate charges every request of its route: cost units and, with
// bytes, the declared length.
type plainGate struct{}

func (plainGate) serve(x *exchange) error {
	h := x.h
	key := x.repl.ReplaceAll(h.Key, "")
	if key == "" {
		return x.refuse(http.StatusUnauthorized, "missing_key", "Missing quota token", "The request carries no quota token.")
	}
	if state.ValidateName(key) != nil {
		return x.refuse(http.StatusUnauthorized, "invalid_key", "Invalid quota token", "The quota token is not well-formed.")
	}
	bytes, refused, err := x.declaredBytes()
	if refused {
		return err
	}
	ctx, cancel := context.WithTimeout(x.r.Context(), time.Duration(h.Timeout))
	defer cancel()
	if !x.waitStore(ctx) {
		return x.unavailable(errors.New("quota node not started"))
	}
	x.c.id = state.NewRequestID()
	x.setToken(state.KeyOf(key)) // hashed once: the fingerprint and the consume share it
	if !x.namePools() {
		return x.refuse(http.StatusForbidden, "unknown_pool", "Unknown pool", "The pool this route charges is not named by the request, or does not exist.")
	}
	if h.IdempotencyKey != "" {
		if ik := x.repl.ReplaceAll(h.IdempotencyKey, ""); ik != "" {
			x.c.id = state.DeriveRequestID(key, ik)
		}
	}
	x.c.units, x.c.bytes, x.c.check = h.Cost, bytes, h.CheckOnly
	d, err := x.ask(ctx, h.CheckOnly)
	cancel()
	return x.decided(d, err)
}

// declaredBytes is the length a route that charges bytes is told up
// front. When the request is refused for it, refused is true and err is
// the refusal's.
func (x *exchange) declaredBytes() (n int64, refused bool, err error) {
	if x.h.Bytes == "" {
		return 0, false, nil
	}
	v := x.repl.ReplaceAll(x.h.Bytes, "")
	if v == "" {
		return 0, true, x.refuse(http.StatusLengthRequired, "length_required", "Length required", "This route charges bytes and needs the upload's length up front.")
	}
	n, perr := strconv.ParseInt(v, 10, 64)
	if perr != nil || n < 0 {
		return 0, true, x.refuse(http.StatusBadRequest, "bad_length", "Bad length", "The upload's declared length is not a non-negative integer.")
	}
	// A body longer than what was charged must not get through.
	x.r.Body = http.MaxBytesReader(x.w, x.r.Body, n)
	return n, false, nil
}

// decided answers a request from the cluster's decision on c: a denial, a
// 503, or the next handler, with the charge refunded when it fails.
func (x *exchange) decided(d state.Decision, err error) error {
	if err != nil {
		if !x.c.check && x.h.OnUnavailable != "allow" {
			// The consume may have been applied without this node learning
			// of it. The client is told it failed, so take the charge back:
			// a refund by the same id undoes it, or, if the consume is
			// applied later, makes it charge nothing. The cluster could not
			// be reached just now, so the refund is kept and retried in the
			// background until the leader has it; the 503 goes out now.
			x.store.RefundLater(x.c.id)
		}
		return x.unavailable(err)
	}

	if d.TokenID != "" {
		x.c.fp = d.TokenID // the token's own id (differs for tokens made before the cluster secret)
		x.repl.Set("http.quota.token_fingerprint", x.c.fp)
	}
	setDecisionPlaceholders(x.repl, d)
	setRateLimitHeaders(x.w.Header(), d, time.Now())
	if !d.Allowed {
		return x.exceeded(d)
	}
	countDecision("allowed", "")

	if x.c.check || x.h.ChargeOn == "attempt" || d.Duplicate {
		// A duplicate was charged (and, if it failed, refunded) by its first
		// request; refunding here would give back a successful upload.
		return x.forward()
	}
	// A failed upload is refunded: its answer's RateLimit header says so.
	hw := &refundHeaders{ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: x.w}, d: d, units: x.c.units, bytes: x.c.bytes}
	rec := caddyhttp.NewResponseRecorder(hw, nil, nil)
	body := watchBody(x.r)
	err = x.forwardTo(rec)
	status := rec.Status()
	if err != nil || status >= 400 {
		hw.failed() // an error is answered later, by Caddy's error handling
		x.refund(status, err)
		if (status == 0 || status == statusClientClosed) && body.wasShort() {
			// The client sent less than it declared; say so, not 502 or 499.
			return x.deny(refusal{http.StatusBadRequest, "incomplete_body", "Incomplete body",
				"The request body ended before its declared Content-Length; nothing was charged.", "", nil})
		}
	}
	if hw.held {
		hw.ResponseWriterWrapper.WriteHeader(statusClientClosed)
	}
	return err
}

// shortBody notes a request body that ended before its Content-Length.
// The reverse proxy reads it in a goroutine of its own, which may still
// be reading when the proxy has returned: a client that half-closes its
// connection after a short body cancels the request's context as the
// body ends, and the proxy may answer that cancel (499) before its read
// returns. closed says when the reading is over.
type shortBody struct {
	io.ReadCloser
	ctx    context.Context
	want   int64 // the declared length
	read   atomic.Int64
	short  atomic.Bool
	closed atomic.Bool
}

func (b *shortBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.read.Add(int64(n))
	if errors.Is(err, io.ErrUnexpectedEOF) {
		b.short.Store(true)
	}
	return n, err
}

func (b *shortBody) Close() error {
	b.closed.Store(true)
	return b.ReadCloser.Close()
}

// wasShort says whether the body ended early, once whoever reads it has
// closed it (or a second passed): it ended before its length, or the
// client hung up before sending it all. Only a failed upload asks, so it
// polls rather than give every upload a channel.
func (b *shortBody) wasShort() bool {
	for deadline := time.Now().Add(time.Second); !b.closed.Load() && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	return b.short.Load() || (b.ctx.Err() != nil && b.read.Load() < b.want)
}

// watchBody puts a shortBody around r's body.
func watchBody(r *http.Request) *shortBody {
	b := &shortBody{ReadCloser: r.Body, ctx: r.Context(), want: r.ContentLength}
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = b
	} else {
		b.closed.Store(true)
	}
	return b
}

// refundHeaders rewrites the RateLimit headers when the upstream's answer
// is a failure, which this handler refunds, before the headers go out.
// It holds back the reverse proxy's 499 (the client closed its side,
// which a client that sends a short body and half-closes does): the
// handler may still have an answer for it.
type refundHeaders struct {
	*caddyhttp.ResponseWriterWrapper
	d            state.Decision // the charge's decision
	units, bytes int64
	done         bool
	held         bool // a 499 not written yet
}

// statusClientClosed is what Caddy's reverse proxy records when the
// client went away before the upstream answered.
const statusClientClosed = 499

func (rw *refundHeaders) WriteHeader(status int) {
	if status >= 400 {
		rw.failed()
	}
	if status == statusClientClosed {
		rw.held = true
		return
	}
	rw.ResponseWriterWrapper.WriteHeader(status)
}

func (rw *refundHeaders) failed() {
	if !rw.done {
		rw.done = true
		refunded := rw.d
		refunded.UsageCount = max(0, refunded.UsageCount-rw.units)
		refunded.BytesUsed = max(0, refunded.BytesUsed-rw.bytes)
		setRateLimitHeaders(rw.Header(), refunded, time.Now())
	}
}

// refund gives back a charge whose upload failed. It runs on its own
// deadline: the client may already be gone.
func (x *exchange) refund(status int, cause error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(x.h.Timeout))
	defer cancel()
	fields := []zap.Field{zap.String("token_fingerprint", x.c.fp), zap.Int("status", status)}
	if cause != nil {
		fields = append(fields, zap.NamedError("cause", cause))
	}
	if err := x.store.Refund(ctx, x.c.id); err != nil {
		// Kept and retried until the leader has it (the store says at
		// WARN while refunds wait).
		x.store.RefundLater(x.c.id)
		x.h.logger.Debug("refund of a failed upload queued for retry", append(fields, zap.Error(err))...)
		return
	}
	refunds.Inc()
	x.h.logger.Debug("refunded failed upload", fields...)
}

func (x *exchange) exceeded(d state.Decision) error {
	// Limit exceedances are what operators watch for, at WARN. Unknown,
	// revoked and expired tokens are ordinary refusals (and a flood of
	// random keys must not flood the log at WARN), so they go at INFO,
	// within a shared budget of lines.
	level, msg := zap.InfoLevel, "quota denied"
	if d.Reason == state.ReasonExhausted || d.Reason == state.ReasonBytesExhausted {
		level, msg = zap.WarnLevel, "quota exceeded"
	}
	if ok, heldBack, unlogged := x.h.denials.admit(x.c.fp+"/"+string(d.Reason), level == zap.InfoLevel, time.Now()); ok {
		x.h.logger.Log(level, msg,
			zap.String("token_fingerprint", x.c.fp),
			zap.String("reason", string(d.Reason)),
			zap.String("quota", d.Quota),
			zap.Int64("usage_count", d.UsageCount),
			zap.Int64("usage_limit", d.UsageLimit),
			zap.Int64("bytes_used", d.BytesUsed),
			zap.Int64("bytes_limit", d.BytesLimit),
			zap.Bool("check_only", x.h.CheckOnly),
			zap.Bool("dry_run", x.h.DryRun),
			zap.String("remote_ip", remoteIP(x.r)),
			zap.String("route", route(x.r)),
			zap.Int("repeats_not_logged", heldBack),
			zap.Int("other_denials_not_logged", unlogged))
	}
	if x.h.DryRun {
		countDenial("dry_run", string(d.Reason), d.Quota)
		return x.forward()
	}
	countDenial("denied", string(d.Reason), d.Quota)
	if pool, ok := strings.CutPrefix(d.Quota, "pool:"); ok {
		return x.poolDenied(pool, d)
	}
	switch d.Reason {
	case state.ReasonExhausted:
		detail := "This token has no uploads left."
		if left := d.Remaining(); left > 0 {
			detail = fmt.Sprintf("This request counts as %d uploads; the token has %d left.", x.h.Cost, left)
		}
		return x.deny(refusal{http.StatusTooManyRequests, "exhausted", "Upload quota exhausted", detail, d.Reason, &d})
	case state.ReasonBytesExhausted:
		return x.deny(refusal{http.StatusTooManyRequests, "bytes_exhausted", "Byte quota exhausted",
			"This upload would exceed the token's byte quota.", d.Reason, &d})
	case state.ReasonRevoked:
		return x.deny(refusal{http.StatusForbidden, "revoked", "Token revoked", "This token has been revoked.", d.Reason, nil})
	case state.ReasonExpired:
		return x.deny(refusal{http.StatusForbidden, "expired", "Token expired", "This token has expired.", d.Reason, nil})
	case state.ReasonNoSuchUpload:
		return x.deny(refusal{http.StatusNotFound, "no_such_upload", "No such upload",
			"The upload does not exist, or its quota reservation expired or was aborted.", d.Reason, nil})
	case state.ReasonTooManyUploads:
		x.w.Header().Set("Retry-After", "60")
		return x.deny(refusal{http.StatusServiceUnavailable, "too_many_uploads", "Too many open uploads",
			"The quota cluster holds as many incomplete multipart uploads as it keeps; complete or abort some.", d.Reason, nil})
	case state.ReasonRefunded:
		return x.deny(refusal{http.StatusConflict, "refunded", "Request refunded",
			"This request's idempotency key belongs to a charge that was refunded while still in flight; retry with the same key.", d.Reason, nil})
	default:
		return x.deny(refusal{http.StatusForbidden, "unknown", "Unknown token", "No such token.", state.ReasonUnknown, nil})
	}
}

// poolDenied answers a charge a pool refused.
func (x *exchange) poolDenied(pool string, d state.Decision) error {
	switch d.Reason {
	case state.ReasonExhausted:
		return x.deny(refusal{http.StatusTooManyRequests, "exhausted", "Upload quota exhausted",
			fmt.Sprintf("Pool %s has no uploads left.", pool), d.Reason, &d})
	case state.ReasonBytesExhausted:
		return x.deny(refusal{http.StatusTooManyRequests, "bytes_exhausted", "Byte quota exhausted",
			fmt.Sprintf("This upload would exceed pool %s's byte quota.", pool), d.Reason, &d})
	case state.ReasonExpired:
		return x.deny(refusal{http.StatusForbidden, "expired", "Pool expired", fmt.Sprintf("Pool %s has expired.", pool), d.Reason, &d})
	}
	return x.deny(refusal{http.StatusForbidden, "unknown_pool", "Unknown pool", fmt.Sprintf("No pool named %s.", pool), state.ReasonUnknown, &d})
}

func (x *exchange) unavailable(err error) error {
	countDecision("unavailable", "")
	if x.h.OnUnavailable == "allow" {
		x.repl.Set("http.quota.decision", "unavailable")
		x.h.logger.Warn("quota cluster unavailable; letting the request through (on_unavailable allow)",
			zap.String("token_fingerprint", x.c.fp), zap.String("remote_ip", remoteIP(x.r)), zap.String("route", route(x.r)), zap.Error(err))
		return x.forward()
	}
	if ok, since := x.h.outage.admit(time.Now()); ok {
		// One line per interval however many requests get a 503: an
		// outage must not flood the log it is diagnosed from.
		x.h.logger.Warn("quota cluster unavailable; answering 503 with Retry-After",
			zap.String("token_fingerprint", x.c.fp), zap.String("remote_ip", remoteIP(x.r)), zap.String("route", route(x.r)),
			zap.Int("unavailable_answers_not_logged", since), zap.Error(err))
	}
	x.w.Header().Set("Retry-After", "1")
	return x.deny(refusal{http.StatusServiceUnavailable, "unavailable", "Quota service unavailable",
		"The quota cluster could not decide in time; retry shortly.", "", nil})
}

// refuse answers a request refused before the cluster was asked (no key, a
// malformed key, no or a bad length): counted, logged within the denial
// log's budget, and with dry_run let through like any other denial.
func (x *exchange) refuse(status int, kind, title, detail string) error {
	reason := kind
	if ok, heldBack, unlogged := x.h.denials.admit("/"+reason, true, time.Now()); ok {
		x.h.logger.Info("quota denied",
			zap.String("reason", reason),
			zap.Bool("dry_run", x.h.DryRun),
			zap.String("remote_ip", remoteIP(x.r)),
			zap.String("route", route(x.r)),
			zap.Int("repeats_not_logged", heldBack),
			zap.Int("other_denials_not_logged", unlogged))
	}
	if x.h.DryRun {
		countDecision("dry_run", reason)
		x.repl.Set("http.quota.decision", "denied")
		x.repl.Set("http.quota.reason", kind)
		return x.forward()
	}
	countDecision("denied", reason)
	return x.deny(refusal{status, kind, title, detail, "", nil})
}

// problem is an RFC 9457 problem details body.
type problem struct {
	Type     string       `json:"type"`
	Title    string       `json:"title"`
	Status   int          `json:"status"`
	Detail   string       `json:"detail"`
	Instance string       `json:"instance,omitempty"`
	Reason   state.Reason `json:"reason,omitempty"`
	// Quota is the quota that refused: "token" or "pool:NAME".
	Quota  string `json:"quota,omitempty"`
	Limit  *int64 `json:"usage_limit,omitempty"`
	Used   *int64 `json:"usage_count,omitempty"`
	BLimit *int64 `json:"bytes_limit,omitempty"`
	BUsed  *int64 `json:"bytes_used,omitempty"`
}

// deny answers a refusal in the route's protocol.
func (x *exchange) deny(a refusal) error {
	if a.status == http.StatusServiceUnavailable {
		x.repl.Set("http.quota.decision", "unavailable")
	} else {
		x.repl.Set("http.quota.decision", "denied")
	}
	x.repl.Set("http.quota.reason", a.kind)
	return x.h.protocol().refusal(x, a)
}

// refusal is one answer that refuses a request: its status, the kind of
// refusal (the problem type, and the reason placeholder), the words, and
// the decision behind it when the cluster made one.
type refusal struct {
	status              int
	kind, title, detail string
	reason              state.Reason
	d                   *state.Decision
}

// refusal writes a problem+json answer. Nothing in it names the token.
func (plainGate) refusal(x *exchange, a refusal) error {
	p := problem{Type: "urn:raftquota:problem:" + a.kind, Title: a.title, Status: a.status, Detail: a.detail, Instance: originalPath(x.r), Reason: a.reason}
	if d := a.d; d != nil {
		p.Quota = d.Quota
		p.Limit, p.Used, p.BLimit, p.BUsed = &d.UsageLimit, &d.UsageCount, &d.BytesLimit, &d.BytesUsed
		if d.ResetAt > 0 && a.status == http.StatusTooManyRequests {
			x.w.Header().Set("Retry-After", retryAfter(d))
		}
	}
	x.w.Header().Set("Content-Type", "application/problem+json")
	x.w.Header().Set("Cache-Control", "no-store")
	x.w.WriteHeader(a.status)
	return json.NewEncoder(x.w).Encode(p)
}

// retryAfter is how many seconds until d's window renews, at least 1.
func retryAfter(d *state.Decision) string {
	return strconv.FormatInt(max(1, int64(time.Until(time.Unix(0, d.ResetAt)).Seconds()+0.999)), 10)
}

func setDecisionPlaceholders(repl *caddy.Replacer, d state.Decision) {
	if d.Allowed {
		repl.Set("http.quota.decision", "allowed")
	} else {
		repl.Set("http.quota.decision", "denied")
		repl.Set("http.quota.reason", string(d.Reason))
	}
	repl.Set("http.quota.limit", d.UsageLimit)
	repl.Set("http.quota.remaining", d.Remaining())
	repl.Set("http.quota.quota", d.Quota)
}

// setRateLimitHeaders writes the IETF httpapi RateLimit-Policy and RateLimit
// fields: one item for uploads and one (qu="content-bytes") for bytes, for
// the limits the token has.
func setRateLimitHeaders(hdr http.Header, d state.Decision, now time.Time) {
	if d.UsageLimit <= 0 && d.BytesLimit <= 0 {
		return
	}
	// Built with appends, not fmt: this runs on every decision. An item is
	// "name";param=n, then tail and, if not negative, tailN.
	item := func(b []byte, name, param string, n int64, tail string, tailN int64) []byte {
		if len(b) > 0 {
			b = append(b, ", "...)
		}
		b = append(b, '"')
		b = append(b, name...)
		b = append(b, '"', ';')
		b = append(b, param...)
		b = strconv.AppendInt(b, n, 10)
		b = append(b, tail...)
		if tailN >= 0 {
			b = strconv.AppendInt(b, tailN, 10)
		}
		return b
	}
	var policy, left []byte
	window, reset := int64(-1), int64(-1)
	windowP, resetP := "", ""
	if d.RenewEvery > 0 {
		window, windowP = int64(time.Duration(d.RenewEvery).Seconds()), ";w="
	}
	if d.ResetAt > 0 {
		reset, resetP = max(0, int64(time.Unix(0, d.ResetAt).Sub(now).Seconds()+0.999)), ";t="
	}
	if d.UsageLimit > 0 {
		policy = item(policy, "uploads", "q=", d.UsageLimit, windowP, window)
		left = item(left, "uploads", "r=", d.Remaining(), resetP, reset)
	}
	if d.BytesLimit > 0 {
		policy = item(policy, "bytes", "q=", d.BytesLimit, `;qu="content-bytes"`+windowP, window)
		left = item(left, "bytes", "r=", d.BytesRemaining(), resetP, reset)
	}
	hdr.Set("RateLimit-Policy", string(policy))
	hdr.Set("RateLimit", string(left))
}

// route is the request's method and path as the client sent them, before
// handle_path or rewrites changed it.
func route(r *http.Request) string {
	return r.Method + " " + originalPath(r)
}

func originalPath(r *http.Request) string {
	if orig, ok := r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request); ok && orig.URL != nil {
		return orig.URL.Path
	}
	return r.URL.Path
}

func remoteIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
