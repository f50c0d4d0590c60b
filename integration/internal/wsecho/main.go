// Command wsecho is a test backend for WebSockets (image upstreamd/wsecho):
// GET / answers "hostname: <name>", GET /healthz "ok", and /ws echoes each
// message as "<name>: <message>". On SIGTERM it stops taking new
// connections but keeps the open WebSockets until their clients close
// them or the engine kills it (a container's stop grace): what a backend
// that drains well does.
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/coder/websocket"
)

func main() {
	name, _ := os.Hostname()
	var open sync.WaitGroup
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) { _, _ = fmt.Fprintf(w, "hostname: %s\n", name) })
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		open.Add(1)
		defer open.Done()
		defer func() { _ = c.CloseNow() }()
		ctx := context.WithoutCancel(r.Context()) // outlives the server's shutdown
		for {
			typ, msg, err := c.Read(ctx)
			if err != nil {
				return
			}
			if err := c.Write(ctx, typ, []byte(name+": "+string(msg))); err != nil {
				return
			}
		}
	})
	srv := &http.Server{Addr: ":8080", Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
		log.Printf("SIGTERM: no new connections; waiting for the open WebSockets")
		_ = srv.Shutdown(context.Background()) // hijacked connections are not waited for here
		open.Wait()
		log.Printf("every WebSocket closed")
		os.Exit(0)
	}()
	if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
	select {} // the signal goroutine exits
}
