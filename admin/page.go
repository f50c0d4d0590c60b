package admin

import (
	"bytes"
	_ "embed"
	"fmt"
	"html/template"
	"net/http"
	"time"

	"github.com/upstreamd/upstreamd/internal/events"
	"github.com/upstreamd/upstreamd/internal/health"
)

//go:embed page.html.tmpl
var pageSource string

// pageEvents is how many events the page shows.
const pageEvents = 60

var pageTemplate = template.Must(template.New("page").Funcs(template.FuncMap{
	"ago":   ago,
	"until": until,
	// soon: a certificate expiring within 20 days (ACME renews 30 before).
	"soon":  func(now, t time.Time) bool { return t.Sub(now) < 20*24*time.Hour },
	"deref": func(t *time.Time) time.Time { return *t },
	"clock": func(t time.Time) string { return t.Local().Format("15:04:05.000") },
	"stamp": func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
	"ms":    func(f float64) string { return fmt.Sprintf("%.1f ms", f) },
	"severity": func(k events.Kind) string {
		switch k {
		case events.Died, events.ConfigRejected, events.RenderFailed, events.LeaseLost:
			return "bad"
		case events.Registered, events.Reloaded, events.Started, events.ProxyCreated:
			return "good"
		case events.HealthChanged:
			return "info"
		}
		return "note"
	},
	"stateClass": func(s health.State) string {
		switch s {
		case health.Healthy:
			return "good"
		case health.Unhealthy:
			return "bad"
		}
		return "note"
	},
}).Parse(pageSource))

// view is what the page template renders.
type view struct {
	S      Status
	Events []events.Event // newest first
}

// ago is how long before now t was, said briefly.
func ago(now, t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	d := now.Sub(t)
	switch {
	case d < time.Second:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm ago", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}

// until is how long after now t is, said briefly; "expired" when past.
func until(now, t time.Time) string {
	d := t.Sub(now)
	switch {
	case d < 0:
		return "expired " + ago(now, t)
	case d < time.Minute:
		return fmt.Sprintf("in %ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("in %dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("in %dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("in %dd", int(d.Hours()/24))
}

// renderPage renders the page template name ("page": the whole page;
// "live": the part the stream replaces) of st and the last events of j.
func renderPage(name string, st Status, j *events.Journal) ([]byte, error) {
	v := view{S: st}
	last := j.Last(pageEvents)
	for i := len(last) - 1; i >= 0; i-- {
		v.Events = append(v.Events, last[i])
	}
	var b bytes.Buffer
	if err := pageTemplate.ExecuteTemplate(&b, name, v); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// page is GET /: the status page, live through /live (SSE).
func (s *Server) page(w http.ResponseWriter, r *http.Request) {
	out, err := renderPage("page", s.cfg.Status(r.Context()), s.cfg.Journal)
	if err != nil {
		http.Error(w, "render the page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:")
	_, _ = w.Write(out)
}

// live is the page's stream: the live part of the page, rendered again
// after each change, as "view" messages.
func (s *Server) live(w http.ResponseWriter, r *http.Request) {
	s.follow(w, r, 0, false, pageView)
}
