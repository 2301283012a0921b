package pool

import (
	"container/list"
	"sync/atomic"
)

// StatementLRU remembers which server-side prepared statements exist on one
// server connection, evicting the least recently used beyond its capacity
// (the evicted name must then be closed on the server).
type StatementLRU struct {
	max   int
	order *list.List // front: most recently used
	byKey map[string]*list.Element
	// count mirrors Len for readers on other goroutines (SHOW SERVERS)
	// while the connection's holder changes the list.
	count atomic.Int32
}

// NewStatementLRU returns an empty LRU holding at most max names.
func NewStatementLRU(max int) *StatementLRU {
	return &StatementLRU{max: max, order: list.New(), byKey: map[string]*list.Element{}}
}

// Has reports whether name is prepared, marking it used.
func (l *StatementLRU) Has(name string) bool {
	e, ok := l.byKey[name]
	if ok {
		l.order.MoveToFront(e)
	}
	return ok
}

// Add records name as prepared; it returns the name evicted to make room,
// or "".
func (l *StatementLRU) Add(name string) (evicted string) {
	if e, ok := l.byKey[name]; ok {
		l.order.MoveToFront(e)
		return ""
	}
	l.byKey[name] = l.order.PushFront(name)
	defer func() { l.count.Store(int32(l.order.Len())) }()
	if l.order.Len() <= l.max {
		return ""
	}
	last := l.order.Back()
	l.order.Remove(last)
	evicted = last.Value.(string)
	delete(l.byKey, evicted)
	return evicted
}

// Remove forgets name (closed, or lost with an error).
func (l *StatementLRU) Remove(name string) {
	if e, ok := l.byKey[name]; ok {
		l.order.Remove(e)
		delete(l.byKey, name)
		l.count.Store(int32(l.order.Len()))
	}
}

// Clear forgets every name (after DISCARD ALL / DEALLOCATE ALL).
func (l *StatementLRU) Clear() {
	l.order.Init()
	clear(l.byKey)
	l.count.Store(0)
}

// Len is the number of names held.
func (l *StatementLRU) Len() int { return l.order.Len() }

// Count is Len, safe to call from any goroutine.
func (l *StatementLRU) Count() int { return int(l.count.Load()) }
