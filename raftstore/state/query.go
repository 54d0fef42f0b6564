package state

import (
	"slices"
	"strings"
	"time"
)

// Reads dispatch through one table, as commands do. A read looks at this
// machine's state only; the node makes it linearizable by serving it on
// the leader after a read barrier, or on a follower once it has applied
// the leader's read point.

// ReadKind names a read. The values travel between nodes: never renumber
// or reuse one.
type ReadKind uint8

const (
	ReadToken ReadKind = iota + 1
	ReadList
	ReadCheck
	// ReadPoint (4) is answered by the node, not the state: the leader's
	// applied index and clock, where a follower may serve a read.
	ReadPoint
	ReadLookup
	ReadPool
	ReadPoolByName
	ReadPools
	ReadPoolTokens
)

// Query is one read.
type Query struct {
	Kind ReadKind
	// ID names a token (ReadToken) or a pool (ReadPool, ReadPoolTokens),
	// Name a pool (ReadPoolByName), Key a token (ReadLookup).
	ID     string
	Name   string
	Key    TokenKey
	Filter TokenFilter
	// Check and At are a check's request and the time it is judged at
	// (the time the leader would stamp into a consume now).
	Check ConsumeRequest
	At    time.Time
}

// Answer answers a Query; the fields its kind reads are set.
type Answer struct {
	Token    *Token
	Tokens   []Token
	Next     string
	Pool     *Pool
	Pools    []Pool
	Decision Decision
}

var queries = map[ReadKind]func(f *reads, q *Query, a *Answer) error{
	ReadToken:      (*reads).queryToken,
	ReadLookup:     (*reads).queryLookup,
	ReadList:       (*reads).queryList,
	ReadCheck:      (*reads).queryCheck,
	ReadPool:       (*reads).queryPool,
	ReadPoolByName: (*reads).queryPool,
	ReadPools:      (*reads).queryPools,
	ReadPoolTokens: (*reads).queryPoolTokens,
}

// reads is the machine as the read table sees it: a face of the same
// data, with one handler a kind of read. The caller holds the machine's
// read lock.
type reads Machine

func (f *reads) m() *Machine { return (*Machine)(f) }

// Query answers a read from this machine's state.
func (f *Machine) Query(q *Query) (Answer, error) {
	var a Answer
	run, ok := queries[q.Kind]
	if !ok {
		return a, Invalidf("unknown read kind %d", q.Kind)
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	return a, run((*reads)(f), q, &a)
}

func (f *reads) queryToken(q *Query, a *Answer) error {
	t := f.tokens.byIDString(q.ID)
	if t == nil {
		return ErrNotFound
	}
	a.Token = t.token()
	return nil
}

func (f *reads) queryLookup(q *Query, a *Answer) error {
	t := f.tokens.get(q.Key)
	if t == nil {
		return ErrNotFound
	}
	a.Token = t.token()
	return nil
}

func (f *reads) queryList(q *Query, a *Answer) error {
	a.Tokens, a.Next = page(f.list(), &q.Filter)
	return nil
}

func (f *reads) queryCheck(q *Query, a *Answer) error {
	a.Decision = f.m().check(&q.Check, q.At)
	return nil
}

func (f *reads) queryPool(q *Query, a *Answer) error {
	var p *poolState
	if q.Kind == ReadPoolByName {
		p = f.pools.named(q.Name)
	} else if id, ok := parsePoolID(q.ID); ok {
		p = f.pools.get(id)
	}
	if p == nil {
		return ErrPoolNotFound
	}
	a.Pool = p.pool()
	return nil
}

func (f *reads) queryPools(_ *Query, a *Answer) error {
	all := f.pools.sorted()
	a.Pools = make([]Pool, len(all))
	for i, p := range all {
		a.Pools[i] = *p.pool()
	}
	return nil
}

func (f *reads) queryPoolTokens(q *Query, a *Answer) error {
	if err := f.queryPool(q, a); err != nil {
		return err
	}
	a.Pool = nil
	filter := q.Filter
	filter.Pool = q.ID
	a.Tokens, a.Next = page(f.list(), &filter)
	return nil
}

// list returns every token, by id. The caller holds f.mu.
func (f *reads) list() []Token {
	out := make([]Token, 0, f.tokens.len())
	f.tokens.each(func(t *tokenState) { out = append(out, *t.token()) })
	slices.SortFunc(out, func(a, b Token) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Tokens returns every token, by id.
func (f *Machine) Tokens() []Token {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return (*reads)(f).list()
}

// TokenFilter selects and pages tokens for Tokens.
type TokenFilter struct {
	// Status keeps tokens with this status ("" for all).
	Status Status
	// RemainingBelow keeps tokens with a usage limit and fewer than this
	// many uploads left (0: no filter).
	RemainingBelow int64
	// CreatedBy keeps tokens made by this creator ("" for all).
	CreatedBy string
	// After starts the page after this id (the previous page's next cursor).
	After string
	// Limit caps the page (0: no cap).
	Limit int
	// Pool keeps the tokens that belong to the pool with this id.
	Pool string
}

func (f *TokenFilter) keep(t *Token) bool {
	if f.Status != "" && t.Status != f.Status {
		return false
	}
	if f.RemainingBelow > 0 && (t.UsageLimit == 0 || t.Remaining() >= f.RemainingBelow) {
		return false
	}
	if f.CreatedBy != "" && t.CreatedBy != f.CreatedBy {
		return false
	}
	if f.Pool != "" && !slices.Contains(t.Pools, f.Pool) {
		return false
	}
	return t.ID > f.After
}

// page keeps the tokens (sorted by id) that filter selects, up to its limit.
func page(all []Token, filter *TokenFilter) ([]Token, string) {
	out := make([]Token, 0, min(len(all), max(filter.Limit, 0)+1))
	for i := range all {
		if !filter.keep(&all[i]) {
			continue
		}
		if filter.Limit > 0 && len(out) == filter.Limit {
			return out, out[len(out)-1].ID
		}
		out = append(out, all[i])
	}
	return out, ""
}

// Counts are the sizes of a machine's tables.
type Counts struct {
	Tokens, Pools, RequestIDs, Uploads int
	// PendingEvents wait in the outbox; DroppedEvents had no room there.
	PendingEvents int
	DroppedEvents uint64
}

// Counts reports the sizes of the state's tables.
func (f *Machine) Counts() Counts {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return Counts{Tokens: f.tokens.len(), Pools: f.pools.count, RequestIDs: f.dedup.Len(), Uploads: len(f.uploads.uploads),
		PendingEvents: len(f.events.events), DroppedEvents: f.events.dropped}
}
