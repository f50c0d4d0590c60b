package render

import (
	"bytes"
	_ "embed"
	"fmt"
	"text/template"
)

//go:embed default.conf.tmpl
var defaultTemplate string

// defaultTemplateName names the built-in template in messages.
const defaultTemplateName = "built-in default template"

// Template is a parsed config template.
type Template struct {
	name string
	tmpl *template.Template
}

// Name returns where the template came from.
func (t *Template) Name() string { return t.name }

// Parse parses a template; name says where it came from (a file path) and
// appears in errors.
func Parse(name, text string) (*Template, error) {
	tmpl, err := template.New(name).Option("missingkey=error").Funcs(funcMap(nil)).Parse(text)
	if err != nil {
		return nil, fmt.Errorf("parse template %s: %w", name, err)
	}
	return &Template{name: name, tmpl: tmpl}, nil
}

// Default returns the built-in template: the seed's upstream and server
// block with upstream keepalive, retries of idempotent requests on the next
// upstream, and a 503 answer while the pool is empty.
func Default() *Template {
	t, err := Parse(defaultTemplateName, defaultTemplate)
	if err != nil {
		panic(err) // covered by tests
	}
	return t
}

// RenderError says that a template failed on a view. The same template
// fails the same way on the same view: it is not worth a retry.
type RenderError struct {
	Template string // where the template came from
	Err      error
}

func (e *RenderError) Error() string { return "render " + e.Template + ": " + e.Err.Error() }

func (e *RenderError) Unwrap() error { return e.Err }

// Render executes the template against the view. It does no I/O and reads
// no clock: the same template and view always give the same bytes. Its
// errors are *RenderError.
func Render(t *Template, v View) ([]byte, error) {
	tmpl, err := t.tmpl.Clone()
	if err != nil {
		return nil, &RenderError{Template: t.name, Err: err}
	}
	tmpl.Funcs(funcMap(v.KVs))
	var buf bytes.Buffer
	if err := tmpl.Execute(&buf, v); err != nil {
		return nil, &RenderError{Template: t.name, Err: err}
	}
	return buf.Bytes(), nil
}
