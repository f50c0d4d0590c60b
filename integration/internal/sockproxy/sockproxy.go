// Package sockproxy forwards a TCP port on 127.0.0.1 to a unix socket (the
// Docker engine's) or a TCP address (etcd's), and breaks the connection on
// demand: Cut closes every connection and refuses new ones (an engine
// restarting, a network partition), StallEvents keeps the Docker event
// streams open but stops moving their bytes (a stream that hangs without
// closing). The shared engine and etcd are never restarted to get there.
package sockproxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
)

// Proxy is a running forwarder.
type Proxy struct {
	l       net.Listener
	network string // of the target: "unix" or "tcp"
	target  string

	mu      sync.Mutex
	cut     bool
	stalled map[net.Conn]bool     // connections whose bytes are held
	resume  chan struct{}         // closed by Resume
	events  map[net.Conn]net.Conn // client side → engine side, of /events requests
	conns   map[net.Conn]bool
	wg      sync.WaitGroup
}

// Start listens on 127.0.0.1 (a free port) and forwards to the unix socket.
func Start(socket string) (*Proxy, error) { return start("unix", socket) }

// StartTCP listens on 127.0.0.1 (a free port) and forwards to addr.
func StartTCP(addr string) (*Proxy, error) { return start("tcp", addr) }

func start(network, target string) (*Proxy, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{l: l, network: network, target: target, conns: map[net.Conn]bool{},
		stalled: map[net.Conn]bool{}, resume: make(chan struct{}), events: map[net.Conn]net.Conn{}}
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

// Addr is the host:port to give clients (tcp://Addr, http://Addr).
func (p *Proxy) Addr() string { return p.l.Addr().String() }

// Cut closes every connection and refuses new ones until Restore.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for c := range p.conns {
		_ = c.Close()
	}
}

// Restore accepts connections again.
func (p *Proxy) Restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = false
}

// StallEvents stops moving bytes on every Docker event stream open now,
// without closing it; everything else, new streams included, works as
// usual. Resume lets the stalled ones go on.
func (p *Proxy) StallEvents() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c, up := range p.events {
		p.stalled[c], p.stalled[up] = true, true
	}
}

// Resume ends a Stall.
func (p *Proxy) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stalled = map[net.Conn]bool{}
	close(p.resume)
	p.resume = make(chan struct{})
}

// Close stops the proxy and closes every connection.
func (p *Proxy) Close() error {
	err := p.l.Close()
	p.Cut()
	p.Resume()
	p.wg.Wait()
	return err
}

func (p *Proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.l.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			continue
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			_ = c.Close()
			continue
		}
		up, err := net.Dial(p.network, p.target)
		if err != nil {
			p.mu.Unlock()
			_ = c.Close()
			continue
		}
		p.conns[c], p.conns[up] = true, true
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(up, c) // requests
		go p.pipe(c, up) // answers
	}
}

// pipe copies src to dst, holding each chunk while src is stalled.
func (p *Proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		for {
			p.mu.Lock()
			stalled, resume := p.stalled[src], p.resume
			p.mu.Unlock()
			if !stalled {
				break
			}
			<-resume
		}
		if n > 0 && bytes.Contains(buf[:n], []byte("/events")) && bytes.HasPrefix(buf[:n], []byte("GET ")) {
			p.mu.Lock()
			p.events[src] = dst // a request: src is the client side
			p.mu.Unlock()
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	_ = dst.Close()
	_ = src.Close()
	p.mu.Lock()
	delete(p.conns, dst)
	delete(p.conns, src)
	delete(p.events, src)
	delete(p.events, dst)
	p.mu.Unlock()
}

var _ io.Closer = (*Proxy)(nil)
