//go:build integration

package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"
)

// chromium returns Debian's headless browser; under CI its absence fails
// the test (.ci/run installs it), elsewhere it skips.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("no chromium: .ci/run installs Debian's chromium package")
	}
	t.Skip("no chromium (apt-get install chromium) to test the status page in")
	return ""
}

// artifacts is where tests leave files to look at (gitignored).
const artifacts = "../integration-artifacts"

// TestStatusPage opens the status page in a real headless Chromium: it
// loads without console errors and shows the 3 healthy backends; after a
// docker kill the dead one leaves it and a new one arrives, pushed through
// the page's event stream (no reload of the page), within 2 s of the
// daemon's API showing the change. It saves screenshots (desktop and
// phone) under integration-artifacts/; UPSTREAMD_UPDATE_DOCS=1 also writes
// the README's docs/status-page.png.
func TestStatusPage(t *testing.T) {
	exe := chromium(t)
	s := newStack(t)
	s.startDaemon()
	s.waitConverged(3, 90*time.Second)

	actx, cancel := chromedp.NewExecAllocator(t.Context(), chromedp.ExecPath(exe), chromedp.Headless, chromedp.NoSandbox,
		chromedp.Flag("disable-gpu", true), chromedp.Flag("disable-dev-shm-usage", true), chromedp.WindowSize(1280, 900))
	defer cancel()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	ctx, cancel = context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()

	var mu sync.Mutex
	var problems []string
	messages := chromedp.Console(ctx)
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			if m.Type == chromedp.ConsoleError || m.IsException() {
				mu.Lock()
				problems = append(problems, m.String())
				mu.Unlock()
			}
		}
	}()
	consoleErrors := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(problems)
	}

	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate("http://"+s.admin+"/")))
	rows := func() ([]string, error) {
		return chromedp.Run(ctx, chromedp.Evaluate[[]string](
			`Array.from(document.querySelectorAll('tr.backend[data-state="healthy"]')).map(r => r.dataset.container)`))
	}
	eventually(t, 20*time.Second, "the page shows 3 healthy backends, its stream connected", func() error {
		got, err := rows()
		if err != nil {
			return err
		}
		live, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.getElementById("conn").className`))
		if err != nil {
			return err
		}
		if len(got) != 3 || live != "live" {
			return fmt.Errorf("healthy rows %v, stream %q", got, live)
		}
		return nil
	})
	loadedAt, err := chromedp.Run(ctx, chromedp.Evaluate[float64](`window.upstreamdLoadedAt`))
	require.NoError(t, err)
	before, err := rows()
	require.NoError(t, err)

	victim := s.backends()[0]
	require.Contains(t, before, victim.Name)
	killed := time.Now()
	require.NoError(t, s.docker.Signal(t.Context(), victim.ID, "KILL"))
	// Both the API and the page, side by side: the page must follow the
	// API (pushed, not polled), not the engine's time to start a backend.
	var apiAt, pageAt time.Time
	replaced := func(names []string) bool {
		return len(names) == 3 && !slices.Contains(names, victim.Name)
	}
	eventually(t, 60*time.Second, "the API and the page show the victim replaced", func() error {
		if apiAt.IsZero() {
			if st, err := s.adminStatus(); err == nil && len(st.Services) == 1 {
				var names []string
				for _, b := range st.Services[0].Backends {
					if b.State == "healthy" {
						names = append(names, b.Container)
					}
				}
				if replaced(names) {
					apiAt = time.Now()
				}
			}
		}
		if pageAt.IsZero() {
			if names, err := rows(); err == nil && replaced(names) {
				pageAt = time.Now()
			}
		}
		if apiAt.IsZero() || pageAt.IsZero() {
			return fmt.Errorf("api replaced: %v, page replaced: %v", !apiAt.IsZero(), !pageAt.IsZero())
		}
		return nil
	})
	lag := pageAt.Sub(apiAt)
	t.Logf("victim %s replaced: the API showed it %s after the kill, the page %s after the API",
		victim.Name, apiAt.Sub(killed).Round(time.Millisecond), lag.Round(time.Millisecond))
	require.Less(t, lag, 2*time.Second, "the page lagged the API by %s", lag)

	again, err := chromedp.Run(ctx, chromedp.Evaluate[float64](`window.upstreamdLoadedAt`))
	require.NoError(t, err)
	require.Equal(t, loadedAt, again, "the page was reloaded")
	feed, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.getElementById("events").innerText`))
	require.NoError(t, err)
	require.Contains(t, feed, victim.Name+" died", "the event feed shows the kill")

	eventually(t, 20*time.Second, "the page shows the 3 backends registered and served", func() error {
		n, err := chromedp.Run(ctx, chromedp.Evaluate[int](
			`document.querySelectorAll('tr.backend[data-state="healthy"][data-registered="true"][data-served="true"]').length`))
		if err == nil && n != 3 {
			err = fmt.Errorf("%d of 3", n)
		}
		return err
	})
	shot(t, ctx, "status-page.png", 1280, 900)

	// Readable on a phone: nothing wider than the screen but the tables,
	// which scroll inside their box.
	require.NoError(t, chromedp.Do(ctx, chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile)))
	overflow, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.documentElement.scrollWidth > window.innerWidth + 1`))
	require.NoError(t, err)
	require.False(t, overflow, "the page is wider than a phone's screen")
	shot(t, ctx, "status-page-phone.png", 390, 844)

	require.Empty(t, consoleErrors(), "console errors")
}

// shot saves a screenshot of the page as an artifact (and, with
// UPSTREAMD_UPDATE_DOCS=1, under docs/).
func shot(t *testing.T, ctx context.Context, name string, width, height int64) {
	t.Helper()
	require.NoError(t, chromedp.Do(ctx, chromedp.EmulateViewport(width, height)))
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	require.NoError(t, err)
	dirs := []string{artifacts}
	if os.Getenv("UPSTREAMD_UPDATE_DOCS") != "" {
		dirs = append(dirs, "../docs")
	}
	for _, dir := range dirs {
		require.NoError(t, os.MkdirAll(dir, 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), png, 0o644))
	}
	t.Logf("screenshot: %s/%s (%d bytes)", artifacts, name, len(png))
}
