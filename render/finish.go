package render

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"net/netip"
	"strconv"
	"text/template"
)

//go:embed trailer.conf.tmpl
var trailerText string

var trailerTmpl = template.Must(template.New("trailer").Parse(trailerText))

// Hash identifies rendered bytes: the first 16 hex digits of their SHA-256.
func Hash(rendered []byte) string {
	sum := sha256.Sum256(rendered)
	return hex.EncodeToString(sum[:8])
}

// Finish returns the config to deliver: the rendered template plus, when
// the view has a status port, upstreamd's status server (answering the
// config's hash, so a reload can be confirmed from outside) and, for
// dynamic pools, the Lua setup and the pools API. Pure, like Render.
func Finish(rendered []byte, v View) []byte {
	if v.StatusPort == 0 {
		return rendered
	}
	var buf bytes.Buffer
	buf.Write(rendered)
	err := trailerTmpl.Execute(&buf, struct {
		Hash       string
		Dynamic    bool
		StatusPort int
	}{Hash(rendered), v.Dynamic, v.StatusPort})
	if err != nil {
		panic(err) // a fixed template over plain values; covered by tests
	}
	return buf.Bytes()
}

// PoolsBody is what the pools API takes: a version line, then one line per
// service with its backends' addresses. Every address was validated when
// it was read from etcd. The Lua balancer dials IP addresses only (it does
// not resolve names), so backends registered by host name are left out;
// DynamicSkips lists them.
func PoolsBody(version int64, v View) []byte {
	var buf bytes.Buffer
	buf.WriteString(strconv.FormatInt(version, 10))
	buf.WriteByte('\n')
	for _, s := range v.Services {
		buf.WriteString(s.Name)
		for _, b := range s.Backends {
			if !isIPAddr(b.Addr) {
				continue
			}
			buf.WriteByte(' ')
			buf.WriteString(b.Addr)
		}
		buf.WriteByte('\n')
	}
	return buf.Bytes()
}

// DynamicSkips returns the backends PoolsBody leaves out: those registered
// by host name rather than IP address.
func DynamicSkips(v View) []Backend {
	var out []Backend
	for _, s := range v.Services {
		for _, b := range s.Backends {
			if !isIPAddr(b.Addr) {
				out = append(out, b)
			}
		}
	}
	return out
}

func isIPAddr(hostport string) bool {
	_, err := netip.ParseAddrPort(hostport)
	return err == nil
}
