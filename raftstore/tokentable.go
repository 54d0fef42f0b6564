package raftstore

// tokenTable holds the tokens by key, with an index by id. While a snapshot
// is being persisted the base map is frozen: the snapshot reads it
// concurrently with Apply, and Apply writes copies into an overlay instead
// (copy on write). Releasing the snapshot folds the overlay back, which
// costs only what changed meanwhile. The id index is never read by a
// snapshot, so it is always changed in place.
type tokenTable struct {
	base   map[TokenKey]*Token
	over   map[TokenKey]*Token // a nil value: deleted since the freeze
	frozen bool
	ids    map[string]TokenKey
}

func newTokenTable(size int) *tokenTable {
	return &tokenTable{base: make(map[TokenKey]*Token, size), ids: make(map[string]TokenKey, size)}
}

// get returns the token for reading only.
func (tt *tokenTable) get(key TokenKey) *Token {
	if tt.frozen {
		if t, ok := tt.over[key]; ok {
			return t
		}
	}
	return tt.base[key]
}

// byID returns the token with id, for reading only.
func (tt *tokenTable) byID(id string) *Token {
	key, ok := tt.ids[id]
	if !ok {
		return nil
	}
	return tt.get(key)
}

// mut returns the token for changing in place.
func (tt *tokenTable) mut(key TokenKey) *Token {
	if !tt.frozen {
		return tt.base[key]
	}
	if t, ok := tt.over[key]; ok {
		return t
	}
	t := tt.base[key]
	if t == nil {
		return nil
	}
	c := t.clone()
	tt.over[key] = c
	return c
}

func (tt *tokenTable) put(t *Token) {
	tt.ids[t.ID] = t.Key
	if tt.frozen {
		tt.over[t.Key] = t
		return
	}
	tt.base[t.Key] = t
}

func (tt *tokenTable) del(key TokenKey) {
	if t := tt.get(key); t != nil {
		delete(tt.ids, t.ID)
	}
	if tt.frozen {
		tt.over[key] = nil
		return
	}
	delete(tt.base, key)
}

// each calls fn for every token, in no particular order.
func (tt *tokenTable) each(fn func(*Token)) {
	for key, t := range tt.base {
		if tt.frozen {
			if _, ok := tt.over[key]; ok {
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
func (tt *tokenTable) freeze() map[TokenKey]*Token {
	tt.frozen = true
	tt.over = make(map[TokenKey]*Token)
	return tt.base
}

// thaw folds the overlay into the base map.
func (tt *tokenTable) thaw() {
	if !tt.frozen {
		return
	}
	for key, t := range tt.over {
		if t == nil {
			delete(tt.base, key)
		} else {
			tt.base[key] = t
		}
	}
	tt.over, tt.frozen = nil, false
}
