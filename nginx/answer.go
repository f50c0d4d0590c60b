package nginx

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"
)

// ChallengePrefix is the path the proxy serves HTTP-01 answers under.
const ChallengePrefix = "/.well-known/acme-challenge"

// WaitAnswer asks the proxy's HTTP listener at addr (ip:port) for the
// HTTP-01 answer of token, as the CA will, until three new connections in
// a row get keyAuth: right after a reload, nginx's old workers may still
// take a connection with the config before. The requests name host; with
// host "", the proxy's address. It returns ctx's error, with the last
// wrong answer, when that never happens.
func WaitAnswer(ctx context.Context, addr, host, token, keyAuth string) error {
	url := "http://" + addr + ChallengePrefix + "/" + token
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	var last error
	for good := 0; good < 3; {
		if last = askAnswer(ctx, client, url, host, keyAuth); last == nil {
			good++
		} else {
			good = 0
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the proxy does not serve the answer of ACME token %s for %s: %w", token, host, errors.Join(last, ctx.Err()))
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// askAnswer GETs url with Host host and checks the body is keyAuth.
func askAnswer(ctx context.Context, client *http.Client, url, host, keyAuth string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Host = host
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1024))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK || string(body) != keyAuth {
		return fmt.Errorf("GET %s (Host %s) answered %s", url, host, resp.Status)
	}
	return nil
}
