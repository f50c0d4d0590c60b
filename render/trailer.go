package render

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
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
		Admin      string
	}{Hash(rendered), v.Dynamic, v.StatusPort, v.Admin})
	if err != nil {
		panic(err) // a fixed template over plain values; covered by tests
	}
	return buf.Bytes()
}
