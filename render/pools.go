package render

import (
	"bytes"
	"strconv"
)

// PoolsBody is what the pools API takes: a version line, then one line per
// service of the spec with its backends' addresses (ip:port, validated when
// read from etcd). Services only etcd lists are left out: nothing routes to
// them, and another deployment's trouble must not reach this proxy.
func PoolsBody(version int64, v View) []byte {
	var buf bytes.Buffer
	buf.WriteString(strconv.FormatInt(version, 10))
	buf.WriteByte('\n')
	for _, s := range v.Services {
		if !s.Configured {
			continue
		}
		buf.WriteString(s.Name)
		for _, b := range s.Backends {
			buf.WriteByte(' ')
			buf.WriteString(b.Addr)
		}
		buf.WriteByte('\n')
	}
	return buf.Bytes()
}
