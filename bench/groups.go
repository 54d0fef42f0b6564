package main

import (
	"context"
	"fmt"
	"hash/fnv"
	"path/filepath"
	"syscall"
	"time"
)

// cpuTime is this process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// groupsSystem is the prototype of docs/SCALING.md: tokens sharded over G
// independent Raft groups, each a 3-node raftstore cluster with its own
// hashicorp/raft instance and log. A token's group is a hash of its name
// modulo G, so a decision still goes through exactly one group's leader;
// nothing is decided outside a Raft log.
type groupsSystem struct {
	groups []*raftquotaSystem
}

func newGroups(g int, dir string) (*groupsSystem, error) {
	s := &groupsSystem{}
	for i := range g {
		rq, err := newRaftquota(3, filepath.Join(dir, fmt.Sprintf("group%d", i)), "")
		if err != nil {
			s.close()
			return nil, err
		}
		s.groups = append(s.groups, rq)
	}
	return s, nil
}

func (s *groupsSystem) name() string {
	return fmt.Sprintf("raftquota %d group(s) × 3 nodes", len(s.groups))
}

// groupOf is where a token lives: FNV-1a of its name, modulo G.
func (s *groupsSystem) groupOf(key int) *raftquotaSystem {
	h := fnv.New32a()
	h.Write([]byte(keyName(key)))
	return s.groups[h.Sum32()%uint32(len(s.groups))]
}

// setup creates each token in its own group only.
func (s *groupsSystem) setup(nkeys int) error {
	return parallel(nkeys, 64, func(k int) error { return s.groupOf(k).create(k) })
}

func (s *groupsSystem) consume(ctx context.Context, key int) (int, error) {
	return s.groupOf(key).consume(ctx, key)
}

func (s *groupsSystem) close() {
	for _, g := range s.groups {
		g.close()
	}
}
