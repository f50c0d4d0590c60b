package render

import (
	"bytes"
	"net/netip"
	"strconv"
)

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

// dynamicSkips returns the backends PoolsBody leaves out: those registered
// by host name rather than IP address.
func dynamicSkips(v View) []Backend {
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
