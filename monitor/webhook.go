package monitor

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// notifier posts alerts to the webhook from a goroutine of its own, so a
// slow or dead receiver never holds up sampling: the queue is bounded and
// each post has a timeout.
type notifier struct {
	url     string
	timeout time.Duration
	client  *http.Client
	log     *slog.Logger
	errors  prometheus.Counter
	queue   chan Alert
}

func newNotifier(url string, timeout time.Duration, log *slog.Logger, errors prometheus.Counter) *notifier {
	return &notifier{
		url:     url,
		timeout: timeout,
		client:  &http.Client{},
		log:     log,
		errors:  errors,
		queue:   make(chan Alert, webhookQueue),
	}
}

// enqueue never blocks: a full queue means the receiver has been failing
// for a while, and the alert is still in the log and /admin/alerts.
func (n *notifier) enqueue(a Alert) {
	select {
	case n.queue <- a:
	default:
		n.errors.Inc()
		n.log.Warn("alert webhook queue full: dropping", "alert", a.Name, "state", string(a.State))
	}
}

func (n *notifier) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case a := <-n.queue:
			if err := n.post(ctx, a); err != nil {
				n.errors.Inc()
				n.log.Warn("alert webhook failed", "alert", a.Name, "state", string(a.State), "url", n.url, "err", err)
			}
		}
	}
}

func (n *notifier) post(ctx context.Context, a Alert) error {
	body, err := json.Marshal(a)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, n.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "parley-monitor")
	resp, err := n.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("webhook answered %s", resp.Status)
	}
	return nil
}
