// Package metrics exposes Vigil's Prometheus metrics. A Metrics is made
// per server (no package globals) and holds its own registry. The media
// core knows nothing of Prometheus: its counters are plain atomics, read
// through snapshots (sfu.Stats, recordings.Stats, webhooks.Stats) when
// Prometheus scrapes, so nothing is done per packet here. The request
// latency histogram and the incident counter are updated as things
// happen.
//
// docs/operations.md lists every metric; a test keeps the two in step.
package metrics

import (
	"net/http"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/vigil-media/vigil/incidents"
	"github.com/vigil-media/vigil/recordings"
	"github.com/vigil-media/vigil/sfu"
	"github.com/vigil-media/vigil/webhooks"
)

// ServerStats is what the signaling layer reports at scrape time.
type ServerStats struct {
	// Sessions counts open signaling sessions by the transport attached
	// now ("ws", "sse", "longpoll", "poll", "whip", "whep", or "none").
	Sessions map[string]int
	Draining bool
}

// Metrics is one server's registry and its collectors.
type Metrics struct {
	reg       *prometheus.Registry
	http      *prometheus.HistogramVec
	incidents *prometheus.CounterVec

	mu         sync.Mutex
	sfu        func() sfu.Stats
	recordings func() recordings.Stats
	server     func() ServerStats
	webhooks   func() webhooks.Stats
}

// New makes a registry with the Go runtime and process collectors, the
// HTTP latency histogram, the incident counter, and the scrape-time
// collector that reads the sources given to the Watch methods.
func New(version string) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.http = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "vigil_http_request_duration_seconds",
		Help:    "HTTP request latency by route (the route pattern, not the path), method and status code. Held requests (WebSocket, SSE, long polls) count their whole duration.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	}, []string{"route", "method", "code"})
	m.incidents = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "vigil_incidents_total",
		Help: "Proctoring incidents recorded (reported, detected or flagged), by type.",
	}, []string{"type"})
	for _, t := range incidents.Types() { // every type exposed from the start, at 0
		m.incidents.WithLabelValues(string(t))
	}
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "vigil_build_info", Help: "Always 1; the labels say which build runs.",
	}, []string{"version", "go_version"})
	build.WithLabelValues(version, runtime.Version()).Set(1)
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.http, m.incidents, build, (*scrape)(m),
	)
	return m
}

// Registry is the registry, to add collectors to.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// ObserveHTTP records one request. route must be the router's pattern,
// never the request's path ("" for a request no route matched: labelled
// "unmatched"); method is labelled from a fixed set (HTTPMethod), so
// that no client can add series.
func (m *Metrics) ObserveHTTP(route, method string, status int, d time.Duration) {
	if route == "" {
		route = "unmatched"
	}
	if status < 100 || status > 599 {
		status = 0
	}
	m.http.WithLabelValues(route, HTTPMethod(method), strconv.Itoa(status)).Observe(d.Seconds())
}

// HTTPMethod is the method label of a request method: one of GET, POST,
// PATCH, DELETE, OPTIONS, HEAD, or "other" for any other (PUT included:
// no route takes it).
func HTTPMethod(method string) string {
	switch method {
	case http.MethodGet, http.MethodPost, http.MethodPatch, http.MethodDelete, http.MethodOptions, http.MethodHead:
		return method
	}
	return "other"
}

// Incident counts one incident of type typ. The types are the fixed set
// of incidents.Types; anything else is counted as "other", so that the
// series stay bounded.
func (m *Metrics) Incident(typ string) {
	if !incidents.ValidType(incidents.Type(typ)) {
		typ = "other"
	}
	m.incidents.WithLabelValues(typ).Inc()
}

// WatchSFU makes every scrape read f.
func (m *Metrics) WatchSFU(f func() sfu.Stats) { m.set(func() { m.sfu = f }) }

// WatchRecordings makes every scrape read f.
func (m *Metrics) WatchRecordings(f func() recordings.Stats) { m.set(func() { m.recordings = f }) }

// WatchServer makes every scrape read f.
func (m *Metrics) WatchServer(f func() ServerStats) { m.set(func() { m.server = f }) }

// WatchWebhooks makes every scrape read f.
func (m *Metrics) WatchWebhooks(f func() webhooks.Stats) { m.set(func() { m.webhooks = f }) }

func (m *Metrics) set(f func()) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f()
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

// The scrape-time metrics.
var (
	dRooms         = desc("vigil_rooms", "Rooms open now.")
	dParticipants  = desc("vigil_participants", "Participants in rooms now, by role.", "role")
	dPublished     = desc("vigil_published_tracks", "Tracks published now, by kind.", "kind")
	dSubscribed    = desc("vigil_subscribed_tracks", "Forwarded copies of tracks now (one per subscriber and track).")
	dRecvPackets   = desc("vigil_received_packets_total", "RTP packets received from publishers.")
	dRecvBytes     = desc("vigil_received_bytes_total", "RTP bytes received from publishers.")
	dFwdPackets    = desc("vigil_forwarded_packets_total", "RTP packets forwarded to subscribers.")
	dFwdBytes      = desc("vigil_forwarded_bytes_total", "RTP bytes forwarded to subscribers (headers and payload).")
	dLost          = desc("vigil_packets_lost_total", "RTP packets lost: upstream, publisher to server (from sequence numbers); downstream, server to subscriber (as their receiver reports say).", "direction")
	dNACKs         = desc("vigil_rtcp_nacks_total", "RTCP NACKs received from subscribers.")
	dPLIs          = desc("vigil_rtcp_plis_total", "RTCP picture loss indications received from subscribers.")
	dFIRs          = desc("vigil_rtcp_firs_total", "RTCP full intra requests received from subscribers.")
	dSheds         = desc("vigil_overload_sheds_total", "Times an up-track's reader fell behind and made down-tracks drop video to the next keyframe.")
	dShedPackets   = desc("vigil_overload_shed_packets_total", "Video packets not forwarded because their down-track was shedding load.")
	dRTT           = desc("vigil_rtt_seconds", "Round-trip time to subscribers from RTCP receiver reports: count and sum over every report, quantiles over the latest value of each forwarded track.")
	dJitter        = desc("vigil_jitter_seconds", "Interarrival jitter subscribers report: count and sum over every report, quantiles over the latest value of each forwarded track.")
	dRecActive     = desc("vigil_recordings_active", "Recordings in progress.")
	dRecByStatus   = desc("vigil_recordings", "Recordings in the index, by status.", "status")
	dRecBytes      = desc("vigil_recording_bytes_written_total", "Bytes written to recording files.")
	dRecErrors     = desc("vigil_recording_errors_total", "Recordings stopped by an error.")
	dRecDropped    = desc("vigil_recording_dropped_packets", "Packets recordings dropped because their queue was full, over the recordings in the index.")
	dSessions      = desc("vigil_signaling_sessions", "Open signaling sessions, by the transport attached now.", "transport")
	dDraining      = desc("vigil_draining", "1 while the server drains (refuses new rooms), else 0.")
	dHookEmitted   = desc("vigil_webhook_events_total", "Webhook events emitted.")
	dHookResults   = desc("vigil_webhook_deliveries_total", "Webhook deliveries by result: delivered (2xx), failed (given up after every attempt), dropped (queue full).", "result")
	dHookRetries   = desc("vigil_webhook_retries_total", "Webhook attempts after a failed one.")
	dHookQueued    = desc("vigil_webhook_queue_length", "Webhook events waiting to be sent, over every URL.")
	scrapeDescs    = []*prometheus.Desc{dRooms, dParticipants, dPublished, dSubscribed, dRecvPackets, dRecvBytes, dFwdPackets, dFwdBytes, dLost, dNACKs, dPLIs, dFIRs, dSheds, dShedPackets, dRTT, dJitter, dRecActive, dRecByStatus, dRecBytes, dRecErrors, dRecDropped, dSessions, dDraining, dHookEmitted, dHookResults, dHookRetries, dHookQueued}
	knownTransport = []string{"ws", "sse", "longpoll", "poll", "whip", "whep", "none"}
)

// scrape is the collector that reads the snapshots.
type scrape Metrics

// Describe implements prometheus.Collector.
func (s *scrape) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range scrapeDescs {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (s *scrape) Collect(ch chan<- prometheus.Metric) {
	m := (*Metrics)(s)
	m.mu.Lock()
	fsfu, frec, fsrv, fhook := m.sfu, m.recordings, m.server, m.webhooks
	m.mu.Unlock()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	if fsfu != nil {
		st := fsfu()
		gauge(dRooms, float64(st.Rooms))
		for _, role := range []sfu.Role{sfu.RoleParticipant, sfu.RoleHost, sfu.RoleViewer, sfu.RoleCandidate, sfu.RoleProctor} {
			gauge(dParticipants, float64(st.Participants[role]), string(role))
		}
		for _, kind := range []string{"audio", "video"} {
			gauge(dPublished, float64(st.UpTracks[kind]), kind)
		}
		gauge(dSubscribed, float64(st.DownTracks))
		counter(dRecvPackets, st.PacketsReceived)
		counter(dRecvBytes, st.BytesReceived)
		counter(dFwdPackets, st.PacketsForwarded)
		counter(dFwdBytes, st.BytesForwarded)
		counter(dLost, st.PacketsLost, "upstream")
		counter(dLost, st.PacketsLostDownstream, "downstream")
		counter(dNACKs, st.NACKs)
		counter(dPLIs, st.PLIs)
		counter(dFIRs, st.FIRs)
		counter(dSheds, st.OverloadSheds)
		counter(dShedPackets, st.PacketsShed)
		summary(ch, dRTT, st.RTT)
		summary(ch, dJitter, st.Jitter)
	}
	if frec != nil {
		st := frec()
		gauge(dRecActive, float64(st.Active))
		for _, status := range []string{recordings.StatusRecording, recordings.StatusPaused, recordings.StatusComplete, recordings.StatusFailed, recordings.StatusInterrupted} {
			gauge(dRecByStatus, float64(st.ByStatus[status]), status)
		}
		counter(dRecBytes, st.BytesWritten)
		counter(dRecErrors, st.Errors)
		gauge(dRecDropped, float64(st.DroppedPackets))
	}
	if fsrv != nil {
		st := fsrv()
		seen := map[string]bool{}
		for _, t := range knownTransport {
			seen[t] = true
			gauge(dSessions, float64(st.Sessions[t]), t)
		}
		for t, n := range st.Sessions {
			if !seen[t] {
				gauge(dSessions, float64(n), t)
			}
		}
		d := 0.0
		if st.Draining {
			d = 1
		}
		gauge(dDraining, d)
	}
	if fhook != nil {
		st := fhook()
		counter(dHookEmitted, st.Emitted)
		counter(dHookResults, st.Delivered, "delivered")
		counter(dHookResults, st.Failed, "failed")
		counter(dHookResults, st.Dropped, "dropped")
		counter(dHookRetries, st.Retries)
		gauge(dHookQueued, float64(st.Queued))
	}
}

func summary(ch chan<- prometheus.Metric, d *prometheus.Desc, s sfu.Summary) {
	q := map[float64]float64{}
	if len(s.Current) > 0 {
		for _, p := range []float64{0.5, 0.9, 0.99} {
			q[p] = s.Quantile(p)
		}
	}
	ch <- prometheus.MustNewConstSummary(d, s.Count, s.Sum, q)
}
