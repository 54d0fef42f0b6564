package raftstore

// tokenTable holds the tokens by name. While a snapshot is being persisted
// the base map is frozen: the snapshot reads it concurrently with Apply, and
// Apply writes copies into an overlay instead (copy on write). Releasing the
// snapshot folds the overlay back, which costs only what changed meanwhile.
type tokenTable struct {
	base   map[string]*Token
	over   map[string]*Token // a nil value: deleted since the freeze
	frozen bool
}

func newTokenTable(size int) *tokenTable {
	return &tokenTable{base: make(map[string]*Token, size)}
}

// get returns the token for reading only.
func (tt *tokenTable) get(name string) *Token {
	if tt.frozen {
		if t, ok := tt.over[name]; ok {
			return t
		}
	}
	return tt.base[name]
}

// mut returns the token for changing in place.
func (tt *tokenTable) mut(name string) *Token {
	if !tt.frozen {
		return tt.base[name]
	}
	if t, ok := tt.over[name]; ok {
		return t
	}
	t := tt.base[name]
	if t == nil {
		return nil
	}
	c := t.clone()
	tt.over[name] = c
	return c
}

func (tt *tokenTable) put(t *Token) {
	if tt.frozen {
		tt.over[t.Name] = t
		return
	}
	tt.base[t.Name] = t
}

func (tt *tokenTable) del(name string) {
	if tt.frozen {
		tt.over[name] = nil
		return
	}
	delete(tt.base, name)
}

// each calls fn for every token, in no particular order.
func (tt *tokenTable) each(fn func(*Token)) {
	for name, t := range tt.base {
		if tt.frozen {
			if _, ok := tt.over[name]; ok {
				continue
			}
		}
		fn(t)
	}
	if tt.frozen {
		for _, t := range tt.over {
			if t != nil {
				fn(t)
			}
		}
	}
}

// freeze returns the base map, which stays unchanged until thaw.
func (tt *tokenTable) freeze() map[string]*Token {
	tt.frozen = true
	tt.over = make(map[string]*Token)
	return tt.base
}

// thaw folds the overlay into the base map.
func (tt *tokenTable) thaw() {
	if !tt.frozen {
		return
	}
	for name, t := range tt.over {
		if t == nil {
			delete(tt.base, name)
		} else {
			tt.base[name] = t
		}
	}
	tt.over, tt.frozen = nil, false
}
