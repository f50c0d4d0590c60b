package spec

import (
	"encoding"
	"errors"
	"fmt"
	"math"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
)

// A spec file is read in three steps, so that every mistake in it is
// reported in one run, each with its line and key: parse the TOML into a
// generic document (only a syntax error stops here), check every key and
// value's type against Node and Project (unknown keys and wrong types are
// reported and dropped), then decode what is left into them, whose values
// validate checks. Where each key was written is kept (positions), so that
// validate's messages name the line too, and applyDefaults can tell a
// written zero from an absent key.

// positions maps a key path ("proxy.port", "service[1].health.rise") to
// where it was written.
type positions map[string]unstable.Position

// keyPositions records where each key and table of a TOML document is
// written. Array-of-tables elements are numbered as the decoder numbers
// them: the second [[service]] is service[1].
func keyPositions(data []byte) positions {
	pos := positions{}
	counts := map[string]int{} // array tables seen so far, by path
	var p unstable.Parser
	p.Reset(data)
	table := ""
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.Table, unstable.ArrayTable:
			table = ""
			parts, first := keyParts(e.Key())
			for i, part := range parts {
				table = joinKey(table, part)
				switch {
				case i == len(parts)-1 && e.Kind == unstable.ArrayTable:
					n := counts[table]
					counts[table]++
					table = fmt.Sprintf("%s[%d]", table, n)
				case counts[table] > 0:
					table = fmt.Sprintf("%s[%d]", table, counts[table]-1)
				}
			}
			if first != nil {
				pos[table] = p.Shape(first.Raw).Start
			}
		case unstable.KeyValue:
			keyValuePositions(&p, e, table, pos)
		}
	}
	return pos
}

// keyValuePositions records a key = value and, for an inline table or an
// array of them, the keys inside.
func keyValuePositions(p *unstable.Parser, e *unstable.Node, table string, pos positions) {
	parts, first := keyParts(e.Key())
	path := table
	for _, part := range parts {
		path = joinKey(path, part)
	}
	if first != nil {
		pos[path] = p.Shape(first.Raw).Start
	}
	v := e.Value()
	switch v.Kind {
	case unstable.InlineTable:
		for it := v.Children(); it.Next(); {
			if c := it.Node(); c.Kind == unstable.KeyValue {
				keyValuePositions(p, c, path, pos)
			}
		}
	case unstable.Array:
		i := 0
		for it := v.Children(); it.Next(); {
			if c := it.Node(); c.Kind == unstable.InlineTable {
				elem := fmt.Sprintf("%s[%d]", path, i)
				pos[elem] = pos[path]
				for kv := c.Children(); kv.Next(); {
					if n := kv.Node(); n.Kind == unstable.KeyValue {
						keyValuePositions(p, n, elem, pos)
					}
				}
			}
			if c := it.Node(); c.Kind != unstable.Comment {
				i++
			}
		}
	}
}

func keyParts(it unstable.Iterator) (parts []string, first *unstable.Node) {
	for it.Next() {
		n := it.Node()
		if first == nil {
			first = n
		}
		parts = append(parts, string(n.Data))
	}
	return parts, first
}

func joinKey(parent, key string) string {
	if parent == "" {
		return key
	}
	return parent + "." + key
}

// at returns where path was written, or where its nearest written parent
// was, and whether path itself was written.
func (pos positions) at(path string) (unstable.Position, bool) {
	if p, ok := pos[path]; ok {
		return p, true
	}
	for {
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			return unstable.Position{}, false
		}
		path = path[:i]
		if p, ok := pos[path]; ok {
			return p, false
		}
	}
}

var textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()

// checkTypes walks a decoded document against the Go type it will be
// decoded into, reports each unknown key and each value of the wrong type
// (say() gets the key path and why), and deletes them from the document, so
// that what is left decodes and can be validated.
func checkTypes(doc map[string]any, t reflect.Type, path string, say func(path, msg string)) {
	fields := tomlFields(t)
	for _, key := range sortedKeys(doc) {
		kp := joinKey(path, key)
		ft, ok := fields[key]
		if !ok {
			say(kp, "unknown key")
			delete(doc, key)
			continue
		}
		if msg := checkValue(doc[key], ft, kp, say); msg != "" {
			say(kp, msg)
			delete(doc, key)
		}
	}
}

// tomlFields maps the TOML keys of struct type t to their fields' types.
func tomlFields(t reflect.Type) map[string]reflect.Type {
	fields := map[string]reflect.Type{}
	for f := range t.Fields() {
		if tag, _, _ := strings.Cut(f.Tag.Get("toml"), ","); tag != "" && tag != "-" {
			fields[tag] = f.Type
		}
	}
	return fields
}

// split divides a document between the node's part and the project's,
// key by key; the tables both have keys in ([etcd], [network]) are split
// too. A key neither knows goes to the project's part, whose check says
// so.
func split(doc map[string]any) (node, project map[string]any) {
	node, project = map[string]any{}, map[string]any{}
	nodeFields, projectFields := tomlFields(reflect.TypeFor[Node]()), tomlFields(reflect.TypeFor[Project]())
	for key, v := range doc {
		nt, inNode := nodeFields[key]
		_, inProject := projectFields[key]
		table, isTable := v.(map[string]any)
		switch {
		case inNode && inProject && isTable:
			ofNode, ofProject := map[string]any{}, map[string]any{}
			nodeKeys := tomlFields(nt)
			for k, x := range table {
				if _, ok := nodeKeys[k]; ok {
					ofNode[k] = x
				} else {
					ofProject[k] = x
				}
			}
			node[key], project[key] = ofNode, ofProject
		case inNode && !inProject:
			node[key] = v
		default:
			project[key] = v
		}
	}
	return node, project
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// checkValue says what is wrong with v as a value of t ("" when nothing
// is); errors inside tables and arrays of tables are said by the walk.
func checkValue(v any, t reflect.Type, path string, say func(path, msg string)) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if reflect.PointerTo(t).Implements(textUnmarshalerType) {
		return checkText(v, t)
	}
	switch t.Kind() {
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			return "want a table, got " + tomlKind(v)
		}
		checkTypes(m, t, path, say)
	case reflect.Slice:
		items, ok := v.([]any)
		if !ok {
			if t.Elem().Kind() == reflect.Struct {
				return "want an array of tables ([[" + path + "]]), got " + tomlKind(v)
			}
			return "want an array, got " + tomlKind(v)
		}
		for i, item := range items {
			elem := fmt.Sprintf("%s[%d]", path, i)
			if msg := checkValue(item, t.Elem(), elem, say); msg != "" {
				return fmt.Sprintf("element %d: %s", i, msg)
			}
		}
	case reflect.String:
		if _, ok := v.(string); !ok {
			return "want a string, got " + tomlKind(v)
		}
	case reflect.Bool:
		if _, ok := v.(bool); !ok {
			return "want true or false, got " + tomlKind(v)
		}
	case reflect.Int:
		n, ok := v.(int64)
		if !ok {
			return "want an integer, got " + tomlKind(v)
		}
		if n < math.MinInt32 || n > math.MaxInt32 {
			return fmt.Sprintf("%d is out of range", n)
		}
	case reflect.Float64:
		switch v.(type) {
		case float64, int64:
		default:
			return "want a number, got " + tomlKind(v)
		}
	}
	return ""
}

// checkText checks the text of a TextUnmarshaler (a Duration) by
// unmarshaling it into a throwaway value.
func checkText(v any, t reflect.Type) string {
	s, ok := v.(string)
	if !ok {
		if n, isInt := v.(int64); isInt && t == reflect.TypeFor[Duration]() {
			return fmt.Sprintf("%d is a bare number; write a duration with its unit, such as %q", n, (time.Duration(n) * time.Second).String())
		}
		return "want a string, got " + tomlKind(v)
	}
	u := reflect.New(t).Interface().(encoding.TextUnmarshaler) //nolint:forcetypeassert // checked by the caller
	if err := u.UnmarshalText([]byte(s)); err != nil {
		return err.Error()
	}
	return ""
}

// tomlKind names a decoded TOML value's kind for a message.
func tomlKind(v any) string {
	switch x := v.(type) {
	case string:
		return "string " + strconv.Quote(x)
	case int64:
		return "integer " + strconv.FormatInt(x, 10)
	case float64:
		return "float " + strconv.FormatFloat(x, 'g', -1, 64)
	case bool:
		return "boolean " + strconv.FormatBool(x)
	case map[string]any:
		return "a table"
	case []any:
		return "an array"
	default:
		return fmt.Sprintf("a %T", v) // dates and times
	}
}

// decodeSpec reads data into c's two parts, reporting every unknown key
// and value of the wrong type (each with file:line:col) and keeping the
// rest. Only a TOML syntax error stops it before the rest is read.
func (c *Spec) decodeSpec(data []byte) []error {
	var doc map[string]any
	if err := toml.Unmarshal(data, &doc); err != nil {
		return []error{describeTOMLError(c.file, err)}
	}
	c.pos = keyPositions(data)
	c.droppedKeys = map[string]bool{}
	var said []string // paths, then what is wrong with each
	say := func(path, msg string) {
		c.droppedKeys[path] = true
		said = append(said, path, msg)
	}
	node, project := split(doc)
	checkTypes(node, reflect.TypeFor[Node](), "", say)
	checkTypes(project, reflect.TypeFor[Project](), "", say)
	var errs []error
	for _, part := range []struct {
		doc  map[string]any
		into any
	}{{node, &c.Node}, {project, &c.Project}} {
		clean, err := toml.Marshal(part.doc)
		if err == nil {
			err = toml.NewDecoder(strings.NewReader(string(clean))).DisallowUnknownFields().Decode(part.into)
		}
		if err != nil { // the check above should have caught it
			errs = append(errs, fmt.Errorf("%s: %w", c.file, err))
		}
	}
	// Said now that the services' names are known.
	for i := 0; i < len(said); i += 2 {
		errs = append(errs, c.errorAt(said[i], c.display(said[i])+": "+said[i+1]))
	}
	return errs
}

// describeTOMLError turns go-toml's syntax errors into file:line:col:
// messages.
func describeTOMLError(file string, err error) error {
	var de *toml.DecodeError
	if errors.As(err, &de) {
		row, col := de.Position()
		return specError{row, col, fmt.Sprintf("%s:%d:%d: %s", file, row, col, strings.TrimPrefix(de.Error(), "toml: "))}
	}
	return fmt.Errorf("%s: %w", file, err)
}

// errorAt prefixes msg with the file and where path (or its nearest
// written parent) is in it.
func (c *Spec) errorAt(path, msg string) error {
	if p, _ := c.pos.at(path); p.Line > 0 {
		return specError{p.Line, p.Column, fmt.Sprintf("%s:%d:%d: %s", c.file, p.Line, p.Column, msg)}
	}
	return specError{msg: fmt.Sprintf("%s: %s", c.file, msg)}
}

// written reports whether the spec file sets path (to a value of the
// right type: one of the wrong type was reported and dropped).
func (c *Spec) written(path string) bool {
	_, ok := c.pos[path]
	if i := strings.LastIndexByte(path, '['); !ok && i > 0 && strings.HasSuffix(path, "]") {
		_, ok = c.pos[path[:i]] // an element of an array of values
	}
	return ok && !c.droppedKeys[path]
}

// specError is one mistake of a spec file, where it is.
type specError struct {
	line, col int
	msg       string
}

func (e specError) Error() string { return e.msg }

// joinByLine joins errors in the order of the lines they name.
func joinByLine(errs []error) error {
	sort.SliceStable(errs, func(i, j int) bool {
		var a, b specError
		errors.As(errs[i], &a)
		errors.As(errs[j], &b)
		return a.line < b.line || a.line == b.line && a.col < b.col
	})
	return errors.Join(errs...)
}
