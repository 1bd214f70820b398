package patterns

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

func seqs(evs []Event) []uint64 {
	if evs == nil {
		return nil
	}
	out := make([]uint64, len(evs))
	for i, e := range evs {
		out[i] = e.Seq
	}
	return out
}

func span(a, b uint64) []uint64 {
	var out []uint64
	for s := a; s <= b; s++ {
		out = append(out, s)
	}
	return out
}

func fillLog(t testing.TB, capacity, n int) *Log {
	t.Helper()
	l := NewLog(LogConfig{Capacity: capacity})
	for i := 1; i <= n; i++ {
		seq, err := l.Append("t", json.RawMessage(fmt.Sprintf("%d", i)))
		if err != nil || seq != uint64(i) {
			t.Fatalf("Append #%d = %d, %v", i, seq, err)
		}
	}
	return l
}

func TestLogReadAfter(t *testing.T) {
	tests := []struct {
		name        string
		capacity    int
		appends     int
		cursor      uint64
		max         int
		want        []uint64
		err         error
		first, last uint64
	}{
		{name: "empty", capacity: 4, appends: 0, cursor: 0, want: nil, first: 0, last: 0},
		{name: "empty ahead", capacity: 4, appends: 0, cursor: 1, err: ErrCursorAhead},
		{name: "all", capacity: 4, appends: 3, cursor: 0, want: []uint64{1, 2, 3}, first: 1, last: 3},
		{name: "after cursor", capacity: 4, appends: 3, cursor: 1, want: []uint64{2, 3}, first: 1, last: 3},
		{name: "up to date", capacity: 4, appends: 3, cursor: 3, want: nil, first: 1, last: 3},
		{name: "ahead", capacity: 4, appends: 3, cursor: 4, err: ErrCursorAhead},
		{name: "max", capacity: 4, appends: 3, cursor: 0, max: 2, want: []uint64{1, 2}},
		{name: "max larger", capacity: 4, appends: 3, cursor: 0, max: 10, want: []uint64{1, 2, 3}},
		{name: "full ring", capacity: 4, appends: 4, cursor: 0, want: []uint64{1, 2, 3, 4}, first: 1, last: 4},
		{name: "wrapped from first", capacity: 4, appends: 6, cursor: 2, want: []uint64{3, 4, 5, 6}, first: 3, last: 6},
		{name: "wrapped middle", capacity: 4, appends: 6, cursor: 4, want: []uint64{5, 6}, first: 3, last: 6},
		{name: "wrapped across end", capacity: 4, appends: 6, cursor: 3, want: []uint64{4, 5, 6}},
		{name: "wrapped across end max", capacity: 4, appends: 7, cursor: 3, max: 3, want: []uint64{4, 5, 6}},
		{name: "too old", capacity: 4, appends: 6, cursor: 1, err: ErrCursorTooOld},
		{name: "too old zero", capacity: 4, appends: 6, cursor: 0, err: ErrCursorTooOld},
		{name: "many wraps", capacity: 3, appends: 100, cursor: 97, want: []uint64{98, 99, 100}, first: 98, last: 100},
		{name: "capacity one", capacity: 1, appends: 5, cursor: 4, want: []uint64{5}, first: 5, last: 5},
		{name: "default capacity", capacity: 0, appends: 1100, cursor: 76, max: -1, want: span(77, 1100), first: 77, last: 1100},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := fillLog(t, tt.capacity, tt.appends)
			got, err := l.ReadAfter(tt.cursor, tt.max)
			if !errors.Is(err, tt.err) {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
			if fmt.Sprint(seqs(got)) != fmt.Sprint(tt.want) || (got == nil) != (tt.want == nil) {
				t.Fatalf("got %v, want %v", seqs(got), tt.want)
			}
			for _, e := range got {
				if string(e.Data) != fmt.Sprint(e.Seq) || e.Type != "t" || e.Time.IsZero() {
					t.Fatalf("bad event %+v", e)
				}
			}
			if tt.first != 0 || tt.last != 0 {
				if l.First() != tt.first || l.Last() != tt.last {
					t.Fatalf("First, Last = %d, %d, want %d, %d", l.First(), l.Last(), tt.first, tt.last)
				}
			}
		})
	}
}

func TestLogReadAfterReturnsCopy(t *testing.T) {
	l := fillLog(t, 4, 2)
	got, _ := l.ReadAfter(0, 0)
	got[0].Type = "changed"
	again, _ := l.ReadAfter(0, 0)
	if again[0].Type != "t" {
		t.Fatal("ReadAfter returned the log's own storage")
	}
}

func TestLogClose(t *testing.T) {
	l := fillLog(t, 4, 2)
	l.Close()
	l.Close() // idempotent
	if !l.Closed() {
		t.Fatal("Closed() = false")
	}
	if _, err := l.Append("t", nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close: %v", err)
	}
	got, err := l.ReadAfter(0, 0)
	if err != nil || len(got) != 2 {
		t.Fatalf("ReadAfter after Close = %v, %v", seqs(got), err)
	}
	select {
	case <-l.Changed(2):
	default:
		t.Fatal("Changed on closed log is not closed")
	}
	if err := l.Wait(context.Background(), 2); !errors.Is(err, ErrClosed) {
		t.Fatalf("Wait on closed log = %v", err)
	}
	if err := l.Wait(context.Background(), 1); err != nil {
		t.Fatalf("Wait with retained events on closed log = %v", err)
	}
}

func TestLogChanged(t *testing.T) {
	l := NewLog(LogConfig{Capacity: 4})
	c1 := l.Changed(0)
	c2 := l.Changed(0)
	if c1 != c2 {
		t.Fatal("Changed returned different channels in one generation")
	}
	select {
	case <-c1:
		t.Fatal("Changed closed before Append")
	default:
	}
	if _, err := l.Append("t", nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c1:
	default:
		t.Fatal("Changed not closed by Append")
	}
	select {
	case <-l.Changed(0):
	default:
		t.Fatal("Changed(0) not already closed with Last()=1")
	}
	c3 := l.Changed(1)
	l.Close()
	select {
	case <-c3:
	default:
		t.Fatal("Changed not closed by Close")
	}
}

func TestLogWait(t *testing.T) {
	tests := []struct {
		name   string
		cursor uint64
		act    func(l *Log, cancel context.CancelFunc)
		want   error
	}{
		{name: "already new", cursor: 0, act: func(*Log, context.CancelFunc) {}, want: nil},
		{name: "append", cursor: 1, act: func(l *Log, _ context.CancelFunc) { _, _ = l.Append("t", nil) }, want: nil},
		{name: "close", cursor: 1, act: func(l *Log, _ context.CancelFunc) { l.Close() }, want: ErrClosed},
		{name: "cancel", cursor: 1, act: func(_ *Log, cancel context.CancelFunc) { cancel() }, want: context.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := fillLog(t, 4, 1)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			errc := make(chan error, 1)
			go func() { errc <- l.Wait(ctx, tt.cursor) }()
			time.Sleep(5 * time.Millisecond) // let it block (the result is the same if it did not)
			tt.act(l, cancel)
			select {
			case err := <-errc:
				if !errors.Is(err, tt.want) {
					t.Fatalf("Wait = %v, want %v", err, tt.want)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Wait did not return")
			}
		})
	}
}

// TestLogConcurrent has writers and cursor readers race; every reader must
// see every sequence number exactly once and in order.
func TestLogConcurrent(t *testing.T) {
	const writers, perWriter, readers = 4, 500, 8
	l := NewLog(LogConfig{Capacity: writers * perWriter})
	var wg sync.WaitGroup
	for r := 0; r < readers; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var cursor uint64
			for {
				evs, err := l.ReadAfter(cursor, 7)
				if err != nil {
					t.Errorf("ReadAfter(%d): %v", cursor, err)
					return
				}
				for _, e := range evs {
					if e.Seq != cursor+1 {
						t.Errorf("got seq %d after %d", e.Seq, cursor)
						return
					}
					cursor = e.Seq
				}
				if len(evs) > 0 {
					continue
				}
				if err := l.Wait(context.Background(), cursor); errors.Is(err, ErrClosed) {
					if cursor != writers*perWriter {
						t.Errorf("reader ended at %d", cursor)
					}
					return
				}
			}
		}()
	}
	var ww sync.WaitGroup
	for w := 0; w < writers; w++ {
		ww.Add(1)
		go func() {
			defer ww.Done()
			for i := 0; i < perWriter; i++ {
				if _, err := l.Append("t", nil); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	ww.Wait()
	l.Close()
	wg.Wait()
}

func BenchmarkLogAppend(b *testing.B) {
	l := NewLog(LogConfig{})
	data := json.RawMessage(`{"k":1}`)
	b.ReportAllocs()
	for b.Loop() {
		_, _ = l.Append("t", data)
	}
}

func BenchmarkLogReadAfter16(b *testing.B) {
	l := fillLog(b, 1024, 2000) // wrapped ring
	cursor := l.Last() - 16
	b.ReportAllocs()
	for b.Loop() {
		evs, err := l.ReadAfter(cursor, 16)
		if err != nil || len(evs) != 16 {
			b.Fatal(len(evs), err)
		}
	}
}

func BenchmarkLogAppendWith100Waiters(b *testing.B) {
	l := NewLog(LogConfig{})
	data := json.RawMessage(`{"k":1}`)
	var ready, done sync.WaitGroup
	for i := 0; i < 100; i++ {
		ready.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			cursor := l.Last()
			ready.Done()
			for l.Wait(context.Background(), cursor) == nil {
				cursor = l.Last()
			}
		}()
	}
	ready.Wait()
	b.ReportAllocs()
	for b.Loop() {
		_, _ = l.Append("t", data)
	}
	b.StopTimer()
	l.Close()
	done.Wait()
}

// BenchmarkLogAppendWake100 measures one Append plus the wake-up of 100
// blocked waiters until each has seen it (a full fan-out round).
func BenchmarkLogAppendWake100(b *testing.B) {
	const n = 100
	l := NewLog(LogConfig{})
	seen := make(chan struct{}, n)
	var done sync.WaitGroup
	for i := 0; i < n; i++ {
		done.Add(1)
		go func() {
			defer done.Done()
			var cursor uint64
			for l.Wait(context.Background(), cursor) == nil {
				cursor = l.Last()
				seen <- struct{}{}
			}
		}()
	}
	b.ReportAllocs()
	for b.Loop() {
		_, _ = l.Append("t", nil)
		for i := 0; i < n; i++ {
			<-seen
		}
	}
	b.StopTimer()
	l.Close()
	done.Wait()
}
