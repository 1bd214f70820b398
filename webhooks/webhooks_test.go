package webhooks_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/vigil-media/vigil/webhooks"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// receiver is a real HTTP endpoint that checks every signature and
// records each delivery; fail decides, per event seq and attempt, to
// answer 503 instead.
type receiver struct {
	t      *testing.T
	secret string
	fail   func(seq uint64, attempt int) bool
	block  chan struct{} // if set, every request waits for it

	mu        sync.Mutex
	delivered []webhooks.Event // answered 2xx, in order
	attempts  map[uint64][]int // Vigil-Attempt headers seen, by seq
	bad       []string
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if rc.block != nil {
		<-rc.block
	}
	body, _ := io.ReadAll(r.Body)
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if err := webhooks.Verify(rc.secret, r.Header.Get(webhooks.SignatureHeader), body, time.Now(), 5*time.Minute); err != nil {
		rc.bad = append(rc.bad, err.Error())
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	var ev webhooks.Event
	if err := json.Unmarshal(body, &ev); err != nil {
		rc.bad = append(rc.bad, "body: "+err.Error())
		http.Error(w, "bad body", http.StatusBadRequest)
		return
	}
	if r.Header.Get("Vigil-Event") != ev.Type || r.Header.Get("Vigil-Delivery") != ev.ID {
		rc.bad = append(rc.bad, "headers do not match the body")
	}
	attempt, _ := strconv.Atoi(r.Header.Get("Vigil-Attempt"))
	rc.attempts[ev.Seq] = append(rc.attempts[ev.Seq], attempt)
	if rc.fail != nil && rc.fail(ev.Seq, attempt) {
		http.Error(w, "try later", http.StatusServiceUnavailable)
		return
	}
	rc.delivered = append(rc.delivered, ev)
}

func (rc *receiver) snapshot() ([]webhooks.Event, map[uint64][]int, []string) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	att := map[uint64][]int{}
	for k, v := range rc.attempts {
		att[k] = append([]int(nil), v...)
	}
	return append([]webhooks.Event(nil), rc.delivered...), att, append([]string(nil), rc.bad...)
}

func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSignedOrderedAndRetried: a receiver that refuses the first two
// attempts of event 1 and the first of event 3 gets all five events,
// each signed, in emission order, with the retries numbered.
func TestSignedOrderedAndRetried(t *testing.T) {
	rc := &receiver{t: t, secret: "s3cret", attempts: map[uint64][]int{},
		fail: func(seq uint64, attempt int) bool { return (seq == 1 && attempt <= 2) || (seq == 3 && attempt == 1) }}
	hs := httptest.NewServer(rc)
	defer hs.Close()
	d, err := webhooks.New(webhooks.Config{URLs: []string{hs.URL + "/hook"}, Secret: "s3cret", MinBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close(time.Second)
	types := []string{webhooks.RoomCreated, webhooks.ParticipantJoined, webhooks.TrackPublished, webhooks.ParticipantLeft, webhooks.RoomClosed}
	for i, typ := range types {
		d.Emit(typ, map[string]any{"n": i})
	}
	waitUntil(t, 5*time.Second, "five deliveries", func() bool { ev, _, _ := rc.snapshot(); return len(ev) == 5 })
	got, attempts, bad := rc.snapshot()
	if len(bad) > 0 {
		t.Fatalf("receiver refused: %v", bad)
	}
	for i, ev := range got {
		if ev.Seq != uint64(i+1) || ev.Type != types[i] {
			t.Errorf("delivery %d: seq %d type %s, want seq %d type %s", i, ev.Seq, ev.Type, i+1, types[i])
		}
		var data struct{ N int }
		if err := json.Unmarshal(ev.Data, &data); err != nil || data.N != i {
			t.Errorf("delivery %d: data %s", i, ev.Data)
		}
	}
	want := map[uint64][]int{1: {1, 2, 3}, 2: {1}, 3: {1, 2}, 4: {1}, 5: {1}}
	for seq, w := range want {
		if g := attempts[seq]; len(g) != len(w) || g[len(g)-1] != w[len(w)-1] {
			t.Errorf("event %d attempts %v, want %v", seq, g, w)
		}
	}
	// The receiver has the last event before the dispatcher counts it.
	waitUntil(t, 5*time.Second, "five counted", func() bool { return d.Stats().Delivered == 5 })
	st := d.Stats()
	if st.Emitted != 5 || st.Delivered != 5 || st.Retries != 3 || st.Failed != 0 || st.Dropped != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestGivesUpAndGoesOn: an event refused MaxAttempts times is given up,
// and the next one is delivered.
func TestGivesUpAndGoesOn(t *testing.T) {
	rc := &receiver{t: t, secret: "k", attempts: map[uint64][]int{}, fail: func(seq uint64, _ int) bool { return seq == 1 }}
	hs := httptest.NewServer(rc)
	defer hs.Close()
	d, err := webhooks.New(webhooks.Config{URLs: []string{hs.URL}, Secret: "k", MaxAttempts: 3, MinBackoff: 5 * time.Millisecond, MaxBackoff: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close(time.Second)
	d.Emit(webhooks.RoomCreated, nil)
	d.Emit(webhooks.RoomClosed, nil)
	waitUntil(t, 5*time.Second, "the second event", func() bool { ev, _, _ := rc.snapshot(); return len(ev) == 1 })
	got, attempts, _ := rc.snapshot()
	if got[0].Seq != 2 || len(attempts[1]) != 3 {
		t.Errorf("delivered %+v after attempts %v", got, attempts)
	}
	// The receiver has the event before the dispatcher has its reply and
	// counts it.
	waitUntil(t, 5*time.Second, "the stats", func() bool { st := d.Stats(); return st.Failed == 1 && st.Delivered == 1 })
}

// TestEmitNeverBlocks: with the receiver stuck, Emit returns at once;
// past the queue's bound events are dropped and counted, and what was
// queued is delivered in order once the receiver answers.
func TestEmitNeverBlocks(t *testing.T) {
	block := make(chan struct{})
	rc := &receiver{t: t, secret: "k", attempts: map[uint64][]int{}, block: block}
	hs := httptest.NewServer(rc)
	defer hs.Close()
	d, err := webhooks.New(webhooks.Config{URLs: []string{hs.URL}, Secret: "k", QueueSize: 4})
	if err != nil {
		t.Fatal(err)
	}
	d.Emit(webhooks.RoomCreated, nil)
	waitUntil(t, 10*time.Second, "the first event in flight", func() bool { return d.Stats().Queued == 0 })
	// The 100 Emits return while the receiver is still stuck (the
	// deadline only bounds a hang: an Emit that waited for the receiver
	// would never return).
	emitted := make(chan struct{})
	go func() {
		defer close(emitted)
		for range 100 {
			d.Emit(webhooks.TrackPublished, nil)
		}
	}()
	select {
	case <-emitted:
	case <-time.After(10 * time.Second):
		close(block)
		t.Fatal("Emit waits for a stuck receiver")
	}
	if st := d.Stats(); st.Dropped != 96 || st.Queued != 4 {
		t.Errorf("stats %+v, want 96 dropped and 4 queued", st)
	}
	close(block)
	d.Close(5 * time.Second)
	got, _, _ := rc.snapshot()
	if len(got) != 5 {
		t.Fatalf("delivered %d events, want 5", len(got))
	}
	for i, ev := range got {
		if ev.Seq != uint64(i+1) {
			t.Errorf("delivery %d has seq %d", i, ev.Seq)
		}
	}
}

func TestVerifyRejects(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	body := []byte(`{"type":"room.created"}`)
	h := webhooks.Sign("key", now, body)
	cases := []struct {
		name, secret, header string
		body                 []byte
		at                   time.Time
		want                 error
	}{
		{"valid", "key", h, body, now, nil},
		{"other secret", "nope", h, body, now, webhooks.ErrBadSignature},
		{"tampered body", "key", h, []byte(`{"type":"room.closed"}`), now, webhooks.ErrBadSignature},
		{"replayed later", "key", h, body, now.Add(10 * time.Minute), webhooks.ErrStale},
		{"no signature", "key", "t=1800000000", body, now, webhooks.ErrMalformed},
		{"garbage", "key", "hello", body, now, webhooks.ErrMalformed},
	}
	for _, c := range cases {
		if err := webhooks.Verify(c.secret, c.header, c.body, c.at, 5*time.Minute); err != c.want {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	if _, err := webhooks.New(webhooks.Config{URLs: []string{"http://x"}}); err == nil {
		t.Error("no secret accepted")
	}
	if _, err := webhooks.New(webhooks.Config{URLs: []string{"ftp://x"}, Secret: "k"}); err == nil {
		t.Error("ftp URL accepted")
	}
	var none *webhooks.Dispatcher
	none.Emit(webhooks.RoomCreated, nil) // a nil dispatcher does nothing
	none.Close(0)
}

// TestFollowsNoRedirect: a webhook URL that answers 3xx to another host
// does not get its deliveries bounced there: the redirect is a failed
// attempt, retried like any other, and the target is never reached, even
// with a client of the caller's that would follow it.
func TestFollowsNoRedirect(t *testing.T) {
	var mu sync.Mutex
	hits, bounced := 0, 0
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits++
		mu.Unlock()
	}))
	defer target.Close()
	for _, status := range []int{http.StatusFound, http.StatusTemporaryRedirect, http.StatusPermanentRedirect} {
		redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			bounced++
			mu.Unlock()
			http.Redirect(w, r, target.URL+"/stolen", status)
		}))
		for _, client := range []*http.Client{nil, {}} {
			d, err := webhooks.New(webhooks.Config{URLs: []string{redirector.URL}, Secret: "k", Client: client,
				MaxAttempts: 3, MinBackoff: 5 * time.Millisecond, MaxBackoff: 10 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			d.Emit(webhooks.IncidentCreated, map[string]string{"room": "exam"})
			waitUntil(t, 10*time.Second, "the event given up", func() bool { return d.Stats().Failed == 1 })
			if st := d.Stats(); st.Delivered != 0 || st.Retries != 2 {
				t.Errorf("status %d: stats %+v, want 0 delivered after 3 attempts", status, st)
			}
			d.Close(time.Second)
		}
		redirector.Close()
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("redirect answers: %d; requests reaching the redirect target: %d", bounced, hits)
	if hits != 0 {
		t.Errorf("the redirect target got %d requests, want 0", hits)
	}
	if bounced != 3*2*3 {
		t.Errorf("the redirector got %d attempts, want %d", bounced, 3*2*3)
	}
}
