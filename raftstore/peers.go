package raftstore

import (
	"sync"
	"time"
)

// peerContact is the leader's view of replication to each peer, from
// Raft's heartbeat observations: a peer is lost from its first failed
// heartbeat until one succeeds again. It answers "is this follower in
// contact" without a probe of its own, which a restarted peer's stale
// connection could fail.
type peerContact struct {
	mu   sync.Mutex
	lost map[string]time.Time // id -> last contact
}

func (p *peerContact) failed(id string, last time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.lost == nil {
		p.lost = map[string]time.Time{}
	}
	if _, ok := p.lost[id]; !ok {
		p.lost[id] = last
	}
}

func (p *peerContact) resumed(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.lost, id)
}

// reset forgets everything: replication restarts with each new leader.
func (p *peerContact) reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.lost = nil
}

// lostSince returns when the leader last reached id, if it lost contact.
func (p *peerContact) lostSince(id string) (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	t, ok := p.lost[id]
	return t, ok
}
