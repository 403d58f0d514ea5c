// Command loadgen is the serving benchmarks' HTTP load generator: open loop at a fixed rate (latency counted
// from each request's scheduled send time, so a slow server cannot hide queueing) or closed loop (N workers
// sending back to back). Standard library only; built by scripts/tools.sh into .tools/bin/loadgen.
//
// It reads one JSON job on stdin and writes one JSON result on stdout:
//
//	job:    {"url", "bodies": [base64 string], "headers": {k: v}, "mode": "open"|"closed", "rate", "concurrency",
//	         "seconds", "warmup_seconds", "timeout_seconds"}
//	result: {"latencies_ms": [float], "errors", "sent", "total", "wall", "statuses": {status: n},
//	         "shed_with_retry_after"}
//
// Open loop: the first warmup_seconds of requests are sent (they open connections) but not counted; sent and
// statuses count the rest. A transport failure is counted under its kind ("timeout", "connection_refused",
// "connection_reset", "error").
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"sync"
	"syscall"
	"time"
)

// maxConnections bounds the open connections, as a client pool does: past the server's capacity, an open loop
// queues in the client (its timeout counts) instead of opening a connection per late request.
const maxConnections = 256

type job struct {
	URL            string            `json:"url"`
	Bodies         [][]byte          `json:"bodies"`
	Headers        map[string]string `json:"headers"`
	Mode           string            `json:"mode"`
	Rate           float64           `json:"rate"`
	Concurrency    int               `json:"concurrency"`
	Seconds        float64           `json:"seconds"`
	WarmupSeconds  float64           `json:"warmup_seconds"`
	TimeoutSeconds float64           `json:"timeout_seconds"`
}

type result struct {
	LatenciesMs        []float64      `json:"latencies_ms"`
	Errors             int            `json:"errors"`
	Sent               int            `json:"sent"`
	Total              int            `json:"total"`
	Wall               float64        `json:"wall"`
	Statuses           map[string]int `json:"statuses"`
	ShedWithRetryAfter int            `json:"shed_with_retry_after"`
}

// outcome of one request: status code (0 on a transport failure, then kind names it) and its latency.
type outcome struct {
	status     int
	kind       string
	retryAfter bool
	latency    time.Duration
}

func failureKind(err error) string {
	var netErr net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection_refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, io.EOF),
		errors.Is(err, io.ErrUnexpectedEOF):
		return "connection_reset"
	}
	return "error"
}

func send(client *http.Client, j *job, body []byte, start time.Time) outcome {
	req, err := http.NewRequest(http.MethodPost, j.URL, bytes.NewReader(body))
	if err != nil {
		return outcome{kind: "error", latency: time.Since(start)}
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range j.Headers {
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		return outcome{kind: failureKind(err), latency: time.Since(start)}
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return outcome{kind: failureKind(err), latency: time.Since(start)}
	}
	return outcome{
		status:     resp.StatusCode,
		retryAfter: resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") != "",
		latency:    time.Since(start),
	}
}

func (r *result) add(o outcome) {
	r.Sent++
	key := o.kind
	if o.status != 0 {
		key = fmt.Sprint(o.status)
	}
	r.Statuses[key]++
	if o.retryAfter {
		r.ShedWithRetryAfter++
	}
	if o.status == http.StatusOK {
		r.LatenciesMs = append(r.LatenciesMs, float64(o.latency.Nanoseconds())/1e6)
	} else {
		r.Errors++
	}
}

// pace blocks until t. A plain nanosleep: the Go runtime's timers (time.Sleep) wake about 0.6 ms late on the
// benchmark machine (median; 1.2 ms at p99), and open-loop latency counts from the scheduled time, so that
// lateness would be charged to the server. nanosleep wakes within 0.14 ms (median) there.
func pace(t time.Time) {
	if d := time.Until(t); d > 0 {
		ts := syscall.NsecToTimespec(int64(d))
		_ = syscall.Nanosleep(&ts, nil) // EINTR: wakes early, the next request still keeps its own schedule
	}
}

func openLoop(client *http.Client, j *job) result {
	skip := int(j.Rate * j.WarmupSeconds)
	n := int(j.Rate*j.Seconds) + skip
	out := make([]outcome, n)
	var wg sync.WaitGroup
	start := time.Now().Add(50 * time.Millisecond)
	interval := float64(time.Second) / j.Rate
	for i := 0; i < n; i++ {
		scheduled := start.Add(time.Duration(float64(i) * interval))
		pace(scheduled)
		wg.Add(1)
		go func(i int, scheduled time.Time) {
			defer wg.Done()
			out[i] = send(client, j, j.Bodies[i%len(j.Bodies)], scheduled)
		}(i, scheduled)
	}
	wg.Wait()
	r := result{LatenciesMs: []float64{}, Statuses: map[string]int{}, Total: n}
	r.Wall = time.Since(start).Seconds() - j.WarmupSeconds
	for _, o := range out[skip:] {
		r.add(o)
	}
	return r
}

func closedLoop(client *http.Client, j *job) result {
	var mu sync.Mutex
	r := result{LatenciesMs: []float64{}, Statuses: map[string]int{}}
	var wg sync.WaitGroup
	start := time.Now()
	end := start.Add(time.Duration(j.Seconds * float64(time.Second)))
	for k := 0; k < j.Concurrency; k++ {
		wg.Add(1)
		go func(k int) {
			defer wg.Done()
			for i := k; time.Now().Before(end); i += j.Concurrency {
				o := send(client, j, j.Bodies[i%len(j.Bodies)], time.Now())
				mu.Lock()
				r.add(o)
				mu.Unlock()
			}
		}(k)
	}
	wg.Wait()
	r.Wall = time.Since(start).Seconds()
	r.Total = r.Sent
	return r
}

func run() error {
	var j job
	decoder := json.NewDecoder(os.Stdin)
	decoder.DisallowUnknownFields()
	if err := decoder.Decode(&j); err != nil {
		return fmt.Errorf("reading the job on stdin: %w", err)
	}
	target, err := url.Parse(j.URL)
	switch {
	case j.URL == "":
		return errors.New("job: url is required")
	case err != nil || (target.Scheme != "http" && target.Scheme != "https") || target.Host == "":
		return fmt.Errorf("job: url must be an absolute http(s) URL, got %q", j.URL)
	case len(j.Bodies) == 0:
		return errors.New("job: bodies must hold at least one request body")
	case j.Seconds <= 0:
		return fmt.Errorf("job: seconds must be > 0, got %v", j.Seconds)
	case j.WarmupSeconds < 0:
		return fmt.Errorf("job: warmup_seconds must be >= 0, got %v", j.WarmupSeconds)
	case j.Mode == "open" && j.Rate <= 0:
		return fmt.Errorf("job: rate must be > 0 in open mode, got %v", j.Rate)
	case j.Mode == "closed" && j.Concurrency <= 0:
		return fmt.Errorf("job: concurrency must be > 0 in closed mode, got %v", j.Concurrency)
	case j.Mode != "open" && j.Mode != "closed":
		return fmt.Errorf("job: mode must be open or closed, got %q", j.Mode)
	}
	if j.TimeoutSeconds <= 0 {
		j.TimeoutSeconds = 5
	}
	client := &http.Client{
		Timeout: time.Duration(j.TimeoutSeconds * float64(time.Second)),
		Transport: &http.Transport{
			MaxConnsPerHost:     maxConnections, // beyond it requests wait for a connection (counted in latency)
			MaxIdleConns:        1024,
			MaxIdleConnsPerHost: 1024,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
		},
	}
	var r result
	if j.Mode == "open" {
		r = openLoop(client, &j)
	} else {
		r = closedLoop(client, &j)
	}
	return json.NewEncoder(os.Stdout).Encode(r)
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(2)
	}
}
