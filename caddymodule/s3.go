package caddymodule

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/raftquota/raftquota/raftstore/state"
)

// S3 makes the quota handler understand the S3 REST API on the routes it
// gates, in both addressing styles (path-style, Host s3.example.com and
// /bucket/key; virtual-hosted, Host bucket.s3.example.com and /key: see
// Domains). One object is one unit
// however it is uploaded, and its bytes are the object's bytes:
//
//	PutObject, POST Object (browser form)   cost units and the object's bytes
//	CopyObject                              cost units and the source's bytes
//	CreateMultipartUpload                   reserves cost units
//	UploadPart, UploadPartCopy              the part's bytes, to the upload's token
//	CompleteMultipartUpload                 keeps the listed parts' charges
//	AbortMultipartUpload, expiry            give back the unit and every byte
//	reads and lists                         pass, uncharged
//	deletes and other writes                pass, uncharged, with a usable token
//
// The token is the request's SigV4 (or V2) access key id, from the
// Authorization header or a presigned URL's X-Amz-Credential, unless the
// handler's key placeholder gives one. Refusals are S3 XML errors: a token
// that cannot recover gets 403 (QuotaExceeded or AccessDenied), which S3
// clients do not retry; a renewing token out until its window resets, or
// a cluster without quorum, gets 503 SlowDown with Retry-After.
type S3 struct {
	// MultipartExpiry is how long a multipart upload may stay incomplete
	// before its unit and bytes are given back and its parts refused.
	// Default 24h. Set the storage's own lifecycle rule for incomplete
	// uploads to the same age, so the backend drops what the quota no
	// longer charges.
	MultipartExpiry caddy.Duration `json:"multipart_expiry,omitempty"`

	// Domains are the S3 endpoint's own DNS names, as clients address it
	// (what MinIO calls its domain and Ceph RGW its DNS name). A request
	// whose Host is one of them, or an IP address, is path-style
	// (/bucket/key); one whose Host is BUCKET.DOMAIN is virtual-hosted
	// (/key). With any other Host a write that the two styles read
	// differently (one path segment: CreateBucket or PutObject?) is
	// refused with 400 InvalidRequest rather than passed uncharged; set
	// the domains whenever clients reach the gate by name.
	Domains []string `json:"domains,omitempty"`
}

// s3Op is what an S3 request does, as far as charging goes.
type s3Op int

const (
	s3Read s3Op = iota
	s3Put
	s3Copy
	s3PostObject
	s3Create
	s3Part
	s3PartCopy
	s3Complete
	s3Abort
	s3OtherWrite
)

// objectSubresources are query parameters that make a PUT on an object
// change something other than its data.
var objectSubresources = []string{"acl", "tagging", "retention", "legal-hold", "torrent", "restore", "select", "attributes"}

// classifyS3 names the S3 operation of r, on an object or (object false)
// on a bucket.
func classifyS3(r *http.Request, object bool) s3Op {
	q := r.URL.Query()
	copying := r.Header.Get("X-Amz-Copy-Source") != ""
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return s3Read
	case http.MethodPut:
		if !object {
			return s3OtherWrite
		}
		if q.Has("uploadId") || q.Has("partNumber") {
			if copying {
				return s3PartCopy
			}
			return s3Part
		}
		for _, sub := range objectSubresources {
			if q.Has(sub) {
				return s3OtherWrite
			}
		}
		if copying {
			return s3Copy
		}
		return s3Put
	case http.MethodPost:
		switch {
		case object && q.Has("uploads"):
			return s3Create
		case object && q.Has("uploadId"):
			return s3Complete
		case !object && len(q) == 0 && isForm(r):
			return s3PostObject
		}
		return s3OtherWrite
	case http.MethodDelete:
		if object && q.Has("uploadId") {
			return s3Abort
		}
	}
	return s3OtherWrite
}

func isForm(r *http.Request) bool {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	return err == nil && mt == "multipart/form-data"
}

// accessKey returns the access key id a request is signed with: SigV4 or
// V2, in the Authorization header or a presigned URL.
func accessKey(r *http.Request) string {
	auth := r.Header.Get("Authorization")
	if rest, ok := strings.CutPrefix(auth, "AWS4-HMAC-SHA256 "); ok {
		for _, f := range strings.Split(rest, ",") {
			if cred, ok := strings.CutPrefix(strings.TrimSpace(f), "Credential="); ok {
				return credentialKey(cred)
			}
		}
		return ""
	}
	if rest, ok := strings.CutPrefix(auth, "AWS "); ok {
		k, _, _ := strings.Cut(rest, ":")
		return strings.TrimSpace(k)
	}
	q := r.URL.Query()
	if cred := q.Get("X-Amz-Credential"); cred != "" {
		return credentialKey(cred)
	}
	return q.Get("AWSAccessKeyId")
}

// credentialKey is the access key id of a SigV4 credential scope
// (AKID/date/region/service/aws4_request).
func credentialKey(cred string) string {
	k, _, ok := strings.Cut(cred, "/")
	if !ok {
		return ""
	}
	return k
}

// s3Token is the token a request names: the key placeholder's value when
// configured and present, else the access key. primary says it came from
// where this handler looks first (the placeholder when one is configured).
func (h *Handler) s3Token(r *http.Request, repl *caddy.Replacer, formKey string) (name string, primary bool) {
	access := accessKey(r)
	if access == "" {
		access = formKey
	}
	if h.Key != "" {
		if k := repl.ReplaceAll(h.Key, ""); k != "" {
			return k, true
		}
		return access, false
	}
	return access, true
}

// objectBytes is the size of the object data in r's body: the decoded
// length of an aws-chunked body, or the Content-Length.
func objectBytes(r *http.Request) (int64, bool) {
	if v := r.Header.Get("X-Amz-Decoded-Content-Length"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		return n, err == nil && n >= 0
	}
	return r.ContentLength, r.ContentLength >= 0
}

// s3Protocol gates S3 requests in both addressing styles: reads pass,
// object writes are charged a unit and their bytes, multipart uploads a
// unit when created and their parts' bytes, and what cannot be
// classified is refused; refusals are S3 error documents.
type s3Protocol struct{}

func (s3Protocol) serve(xp *exchange) error {
	h, r := xp.h, xp.r
	target := addressOf(r, h.S3.Domains)
	op := classify(r, target)
	if op == s3Read {
		return xp.forward()
	}
	if op == s3Ambiguous || (target.style == styleUnknown && len(h.Pools) > 0) {
		// With pools the bucket matters (a pool may be named after it),
		// so every write needs its style known.
		return xp.refuse(http.StatusBadRequest, "ambiguous_address", "Ambiguous S3 address", ambiguityMessage(r, h.S3.Domains))
	}
	if target.style != styleUnknown {
		xp.repl.Set("http.quota.s3.bucket", target.bucket)
		xp.repl.Set("http.quota.s3.key", target.key)
	}
	x := &s3Exchange{exchange: xp, target: target, op: op}
	// A browser form carries its credential in the body, before the file.
	var formKey string
	if op == s3PostObject {
		x.formSize, formKey = postObjectSize(r)
	}
	name, primary := h.s3Token(r, xp.repl, formKey)
	if x.ofUpload() && !primary {
		// Parts, completes and aborts are charged to the token that
		// reserved their upload; some clients send custom headers only on
		// the first request, so the access key does not stand in.
		name = ""
	}
	if name != "" && state.ValidateName(name) != nil {
		return x.refuse(http.StatusUnauthorized, "invalid_key", "Invalid quota token", "The quota token is not well-formed.")
	}
	if name == "" && !x.ofUpload() {
		return x.refuse(http.StatusUnauthorized, "missing_key", "Missing quota token", "The request carries no access key or quota token.")
	}
	ctx, cancel := context.WithTimeout(r.Context(), time.Duration(h.Timeout))
	defer cancel()
	if !x.waitStore(ctx) {
		return x.unavailable(errors.New("quota node not started"))
	}
	x.c.id, x.c.units = state.NewRequestID(), h.Cost
	if name != "" {
		x.setToken(state.KeyOf(name))
	}
	x.upload = state.UploadKeyOf(uploadObject(r, target), r.URL.Query().Get("uploadId"))
	if op == s3Put || op == s3Copy || op == s3PostObject || op == s3Create {
		if !x.namePools() {
			return x.refuse(http.StatusForbidden, "unknown_pool", "Unknown pool", "The pool this route charges is not named by the request, or does not exist.")
		}
	}
	return x.serve(ctx)
}

// s3Exchange is one S3 write through the gate: what it does, and to which
// object or upload.
type s3Exchange struct {
	*exchange
	target   s3Target
	op       s3Op
	upload   state.UploadKey
	formSize int64 // a POST Object's file
}

// ofUpload: the operation belongs to a multipart upload already created.
func (x *s3Exchange) ofUpload() bool {
	return x.op == s3Part || x.op == s3PartCopy || x.op == s3Complete || x.op == s3Abort
}

func (x *s3Exchange) serve(ctx context.Context) error {
	switch x.op {
	case s3Put, s3Copy, s3PostObject:
		return x.object(ctx)
	case s3Part, s3PartCopy:
		return x.part(ctx)
	case s3Create:
		return x.create(ctx)
	case s3Complete:
		return x.completeUpload(ctx)
	case s3Abort:
		return x.abortUpload()
	}
	return x.otherWrite(ctx)
}

// object charges PutObject, CopyObject and POST Object: a unit and the
// object's bytes (formSize for a form).
func (x *s3Exchange) object(ctx context.Context) error {
	n := x.formSize
	if x.op != s3PostObject {
		n = x.objectSize()
	}
	if n < 0 && x.op == s3Copy {
		return x.refuse(http.StatusLengthRequired, "length_required", "Length required",
			"The copy's source size could not be looked up: the store did not answer an unsigned HEAD for it. Copy with x-amz-copy-source-range, or download and upload.")
	}
	if n < 0 {
		return x.refuse(http.StatusLengthRequired, "length_required", "Length required", "This upload's length is not known up front.")
	}
	x.c.bytes = n
	return x.decided(x.ask(ctx, false))
}

// part charges UploadPart and UploadPartCopy: the part's bytes, to the
// upload's token and pools.
func (x *s3Exchange) part(ctx context.Context) error {
	partNumber, err := strconv.ParseInt(x.r.URL.Query().Get("partNumber"), 10, 32)
	if err != nil || partNumber < 1 {
		return x.refuse(http.StatusBadRequest, "bad_part", "Bad part number", "partNumber must be a positive integer.")
	}
	n := x.objectSize()
	if n < 0 && x.op == s3PartCopy {
		return x.refuse(http.StatusLengthRequired, "length_required", "Length required",
			"The part copy's source size could not be looked up: the store did not answer an unsigned HEAD for it. Copy with x-amz-copy-source-range.")
	}
	if n < 0 {
		return x.refuse(http.StatusLengthRequired, "length_required", "Length required", "This part's length is not known up front.")
	}
	x.c.units, x.c.bytes = 0, n
	return x.decided(x.store.Uploads().ChargePart(ctx, x.c.id, x.upload, int32(partNumber), n, x.key))
}

// create reserves a multipart upload's unit, then forwards it.
func (x *s3Exchange) create(ctx context.Context) error {
	x.c.units, x.c.bytes = x.h.Cost, 0
	d, err := x.store.Uploads().Reserve(ctx, x.request(), time.Duration(x.h.S3.MultipartExpiry))
	if err != nil || !d.Allowed {
		return x.decided(d, err)
	}
	return x.createUpload(d)
}

// otherWrite passes deletes and settings, uncharged, with a token that
// could be used: no write passes the gate without one.
func (x *s3Exchange) otherWrite(ctx context.Context) error {
	d, err := x.store.Check(ctx, state.ConsumeRequest{Key: x.key})
	if err == nil && (d.Reason == state.ReasonExhausted || d.Reason == state.ReasonBytesExhausted) {
		d.Allowed, d.Reason = true, ""
	}
	x.c.check = true
	return x.decided(d, err)
}

// objectSize is how many bytes of object data r stores: its body's, or
// for a copy the source's (the copy range's, or the source object's size
// asked of the backend). -1 when it cannot be known before forwarding.
func (x *s3Exchange) objectSize() int64 {
	switch x.op {
	case s3Copy, s3PartCopy:
		if rng := x.r.Header.Get("X-Amz-Copy-Source-Range"); rng != "" {
			var first, last int64
			if _, err := fmt.Sscanf(rng, "bytes=%d-%d", &first, &last); err != nil || first < 0 || last < first {
				return -1
			}
			return last - first + 1
		}
		return x.sourceSize()
	}
	n, ok := objectBytes(x.r)
	if !ok {
		return -1
	}
	if x.r.ContentLength >= 0 {
		// A body longer than it said must not get through.
		x.r.Body = http.MaxBytesReader(x.w, x.r.Body, x.r.ContentLength)
	}
	return n
}

// sourceSize asks the backend, through the next handler, for the size of a
// copy's source object with a HEAD request carrying the client's
// credentials headers. -1 when the backend does not say.
func (x *s3Exchange) sourceSize() int64 {
	path, host, ok := copySource(x.r.Header.Get("X-Amz-Copy-Source"), x.target)
	if !ok {
		return -1
	}
	head := x.r.Clone(x.r.Context())
	head.Method = http.MethodHead
	head.URL = &url.URL{Path: path}
	head.RequestURI = head.URL.RequestURI()
	if host != "" {
		head.Host = host
	}
	head.Body, head.ContentLength = http.NoBody, 0
	for _, k := range []string{"Content-Length", "Content-Type", "Content-Md5", "X-Amz-Copy-Source", "X-Amz-Copy-Source-Range", "X-Amz-Decoded-Content-Length", "Expect"} {
		head.Header.Del(k)
	}
	var buf bytes.Buffer
	rec := caddyhttp.NewResponseRecorder(discardWriter{http.Header{}}, &buf, func(int, http.Header) bool { return true })
	if err := x.next.ServeHTTP(rec, head); err != nil || rec.Status() != http.StatusOK {
		return -1
	}
	n, err := strconv.ParseInt(rec.Header().Get("Content-Length"), 10, 64)
	if err != nil {
		return -1
	}
	return n
}

type discardWriter struct{ h http.Header }

func (d discardWriter) Header() http.Header       { return d.h }
func (discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (discardWriter) WriteHeader(int)             {}

// maxFormPrefix bounds the form fields a POST Object may send before its
// file.
const maxFormPrefix = 1 << 20

// postObjectSize reads a browser-form upload's fields up to its file (S3
// requires the file to be the last field) and returns the file's size (the
// body's length less the fields and the closing boundary, -1 when unknown)
// and the access key of the form's credential. The body is put back whole.
func postObjectSize(r *http.Request) (size int64, access string) {
	_, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	boundary := params["boundary"]
	if boundary == "" || r.ContentLength < 0 {
		return -1, ""
	}
	var prefix []byte
	start := -1
	buf := make([]byte, 32<<10)
	for start < 0 && len(prefix) < maxFormPrefix {
		n, err := r.Body.Read(buf)
		prefix = append(prefix, buf[:n]...)
		start = fileStart(prefix, boundary)
		if err != nil {
			break
		}
	}
	r.Body = struct {
		io.Reader
		io.Closer
	}{io.MultiReader(bytes.NewReader(prefix), r.Body), r.Body}
	if start < 0 {
		return -1, ""
	}
	// The fields before the file, for the credential.
	mr := multipart.NewReader(bytes.NewReader(prefix[:start]), boundary)
	for {
		p, err := mr.NextPart()
		if err != nil {
			break
		}
		switch strings.ToLower(p.FormName()) {
		case "x-amz-credential":
			v, _ := io.ReadAll(io.LimitReader(p, 256))
			access = credentialKey(string(v))
		case "awsaccesskeyid":
			v, _ := io.ReadAll(io.LimitReader(p, 256))
			access = string(v)
		}
	}
	closing := int64(len("\r\n--" + boundary + "--\r\n"))
	return max(0, r.ContentLength-int64(start)-closing), access
}

// fileStart is where the file field's content begins in a form prefix, or
// -1 when the prefix does not reach it yet.
func fileStart(prefix []byte, boundary string) int {
	delim := []byte("--" + boundary)
	for off := 0; ; {
		i := bytes.Index(prefix[off:], delim)
		if i < 0 {
			return -1
		}
		hdrStart := off + i + len(delim)
		end := bytes.Index(prefix[hdrStart:], []byte("\r\n\r\n"))
		if end < 0 {
			return -1
		}
		if isFileField(string(prefix[hdrStart : hdrStart+end])) {
			return hdrStart + end + 4
		}
		off = hdrStart + end + 4
	}
}

// isFileField reports whether a form part's headers name the field "file".
func isFileField(headers string) bool {
	for _, line := range strings.Split(headers, "\r\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || !strings.EqualFold(strings.TrimSpace(k), "Content-Disposition") {
			continue
		}
		_, params, err := mime.ParseMediaType(strings.TrimSpace(v))
		return err == nil && strings.EqualFold(params["name"], "file")
	}
	return false
}

// createUpload forwards a CreateMultipartUpload whose unit is reserved,
// and binds the reservation to the upload id the backend answers with.
func (x *s3Exchange) createUpload(d state.Decision) error {
	if d.TokenID != "" {
		x.c.fp = d.TokenID
	}
	setDecisionPlaceholders(x.r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer), d)
	countDecision("allowed", "")
	var buf bytes.Buffer
	rec := caddyhttp.NewResponseRecorder(x.w, &buf, func(status int, _ http.Header) bool { return status < 300 })
	err := x.forwardTo(rec)
	if err != nil || rec.Status() >= 300 || !rec.Buffered() {
		x.refund(rec.Status(), err)
		return err
	}
	var res struct {
		UploadID string `xml:"UploadId"`
	}
	if xml.Unmarshal(buf.Bytes(), &res) != nil || res.UploadID == "" {
		x.refund(rec.Status(), errors.New("no UploadId in the storage's answer"))
		return x.s3Error(http.StatusBadGateway, "InternalError", "The storage's answer to CreateMultipartUpload held no upload id.")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(x.h.Timeout))
	defer cancel()
	if err := x.store.Uploads().Bind(ctx, x.c.id, state.UploadKeyOf(uploadObject(x.r, x.target), res.UploadID)); err != nil {
		// The backend holds an upload the quota does not know: its parts
		// would be refused, so the client is told to start again.
		x.h.logger.Error("recording a multipart upload failed", zap.String("token_fingerprint", x.c.fp), zap.Error(err))
		x.refund(http.StatusServiceUnavailable, err)
		x.w.Header().Set("Retry-After", "1")
		return x.s3Error(http.StatusServiceUnavailable, "SlowDown", "The quota cluster could not record the upload; retry.")
	}
	setRateLimitHeaders(x.w.Header(), d, time.Now())
	return rec.WriteResponse()
}

// maxCompleteBody bounds a CompleteMultipartUpload body: 10,000 parts with
// their ETags and checksums.
const maxCompleteBody = 8 << 20

// completeUpload marks the upload completing, forwards the complete, and
// keeps the charges of the parts the object is made of, or reopens the
// upload when the backend did not make it.
func (x *s3Exchange) completeUpload(ctx context.Context) error {
	body, err := io.ReadAll(io.LimitReader(x.r.Body, maxCompleteBody+1))
	if err != nil {
		return caddyhttp.Error(http.StatusBadRequest, err)
	}
	if len(body) > maxCompleteBody {
		return x.s3Error(http.StatusBadRequest, "MalformedXML", "The CompleteMultipartUpload body is too large.")
	}
	var req struct {
		Parts []struct {
			PartNumber int32 `xml:"PartNumber"`
		} `xml:"Part"`
	}
	if err := xml.Unmarshal(body, &req); err != nil {
		return x.s3Error(http.StatusBadRequest, "MalformedXML", "The CompleteMultipartUpload body is not valid XML.")
	}
	parts := make([]int32, len(req.Parts))
	for i, p := range req.Parts {
		parts[i] = p.PartNumber
	}
	if err := x.store.Uploads().BeginComplete(ctx, x.upload, x.key, state.DefaultCompleteLimit); err != nil {
		if errors.Is(err, state.ErrNotFound) {
			if x.h.DryRun {
				countDecision("dry_run", string(state.ReasonNoSuchUpload))
				x.r.Body = io.NopCloser(bytes.NewReader(body))
				return x.forward()
			}
			countDecision("denied", string(state.ReasonNoSuchUpload))
			return x.s3Error(http.StatusNotFound, "NoSuchUpload", "The upload does not exist, or its quota reservation expired or was aborted.")
		}
		return x.unavailable(err)
	}
	x.r.Body, x.r.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
	var buf bytes.Buffer
	rec := caddyhttp.NewResponseRecorder(x.w, &buf, func(int, http.Header) bool { return true })
	ferr := x.forwardTo(rec)
	out := buf.Bytes()
	ok := ferr == nil && rec.Status() == http.StatusOK && !bytes.Contains(out, []byte("<Error>"))
	gone := rec.Status() == http.StatusNotFound && bytes.Contains(out, []byte("NoSuchUpload"))
	ectx, cancel := context.WithTimeout(context.Background(), time.Duration(x.h.Timeout))
	defer cancel()
	if err := x.store.Uploads().EndComplete(ectx, x.upload, ok, parts); err != nil {
		// The upload stays completing until DefaultCompleteLimit, then
		// keeps its charge: never less than what was stored.
		x.h.logger.Error("recording a completed multipart upload failed", zap.Bool("completed", ok), zap.Error(err))
	} else if gone {
		// The backend no longer has the upload: it will never complete.
		if err := x.store.Uploads().Abort(ectx, x.upload, state.TokenKey{}); err != nil && !errors.Is(err, state.ErrNotFound) {
			x.h.logger.Error("refunding a vanished multipart upload failed", zap.Error(err))
		}
	}
	if ferr != nil {
		return ferr
	}
	return rec.WriteResponse()
}

// abortUpload forwards an abort and, when the backend no longer holds the
// upload, gives back everything it charged.
func (x *s3Exchange) abortUpload() error {
	rec := caddyhttp.NewResponseRecorder(x.w, nil, nil)
	err := x.forwardTo(rec)
	if err != nil {
		return err
	}
	if s := rec.Status(); s < 300 || s == http.StatusNotFound {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(x.h.Timeout))
		defer cancel()
		if err := x.store.Uploads().Abort(ctx, x.upload, x.key); err != nil && !errors.Is(err, state.ErrNotFound) {
			// A complete in flight decides; else expiry refunds it.
			x.h.logger.Warn("refunding an aborted multipart upload failed", zap.String("token_fingerprint", x.c.fp), zap.Error(err))
		} else if err == nil {
			refunds.Inc()
		}
	}
	return nil
}

// s3ErrorBody is S3's error document.
type s3ErrorBody struct {
	XMLName  xml.Name `xml:"Error"`
	Code     string   `xml:"Code"`
	Message  string   `xml:"Message"`
	Resource string   `xml:"Resource"`
}

// s3Denial maps a refusal to S3's status and code. Tokens that cannot
// recover get 403, which S3 clients do not retry; one that renews, or a
// busy or unreachable cluster, gets 503 SlowDown, which they retry after
// Retry-After.
func s3Denial(status int, kind string, d *state.Decision) (int, string) {
	switch kind {
	case "exhausted", "bytes_exhausted":
		if d != nil && d.ResetAt > 0 {
			return http.StatusServiceUnavailable, "SlowDown"
		}
		return http.StatusForbidden, "QuotaExceeded"
	case "unavailable", string(state.ReasonTooManyUploads):
		return http.StatusServiceUnavailable, "SlowDown"
	case string(state.ReasonNoSuchUpload):
		return http.StatusNotFound, "NoSuchUpload"
	case "length_required":
		return http.StatusLengthRequired, "MissingContentLength"
	case "bad_length", "bad_part":
		return http.StatusBadRequest, "InvalidArgument"
	case "incomplete_body":
		return http.StatusBadRequest, "IncompleteBody"
	case "ambiguous_address":
		return http.StatusBadRequest, "InvalidRequest"
	case "refunded":
		return http.StatusConflict, "OperationAborted"
	}
	return http.StatusForbidden, "AccessDenied"
}

// refusal writes S3's error document for a refusal. Tokens that cannot
// recover get 403, which S3 clients do not retry; one that renews, or a
// busy or unreachable cluster, gets 503 SlowDown with Retry-After.
func (s3Protocol) refusal(x *exchange, a refusal) error {
	st, code := s3Denial(a.status, a.kind, a.d)
	if st == http.StatusServiceUnavailable && a.d != nil && a.d.ResetAt > 0 {
		x.w.Header().Set("Retry-After", retryAfter(a.d))
	}
	return x.s3Error(st, code, a.detail)
}

func (x *exchange) s3Error(status int, code, msg string) error {
	if status == http.StatusServiceUnavailable && x.w.Header().Get("Retry-After") == "" {
		x.w.Header().Set("Retry-After", "1")
	}
	// An upstream answer may have set these already (a create whose upload
	// could not be recorded).
	x.w.Header().Del("Content-Length")
	x.w.Header().Del("ETag")
	x.w.Header().Set("Content-Type", "application/xml")
	x.w.Header().Set("Cache-Control", "no-store")
	x.w.WriteHeader(status)
	io.WriteString(x.w, xml.Header)
	return xml.NewEncoder(x.w).Encode(s3ErrorBody{Code: code, Message: msg, Resource: originalPath(x.r)})
}
